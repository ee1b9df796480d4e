//! Prometheus metrics: the v1 names plus the core's gauges, published by the driver after each
//! batch and counted by the servers per call.
//!
//! Architecture invariant: metrics are atomics inside the prometheus crate; reading them (the
//! /metrics endpoint, the dashboard) never touches the core or waits on its thread.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::core::{CoreStats, Topic};

/// Upper bounds of the RPC latency buckets, in seconds: 100 µs to a minute (a ClaimTask may
/// long-poll; a Watch is timed until its stream is open).
const RPC_SECONDS_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Metrics {
    registry: Registry,
    pub agents_alive: IntGauge,
    pub agents_by_status: IntGaugeVec,
    pub leases_active: IntGauge,
    pub election_groups: IntGauge,
    pub policies: IntGauge,
    pub watchers: IntGauge,
    pub events_total: IntGauge,
    pub rpc_total: IntCounterVec,
    pub rpc_errors_total: IntCounterVec,
    pub watch_overflows: IntCounter,
    pub batch_commands: Histogram,
    pub batch_seconds: Histogram,
    pub store_syncs: IntCounter,
    pub store_bytes: IntCounter,
    pub store_sync_seconds: Histogram,
    pub snapshot_pause_seconds: Histogram,
    pub snapshot_bytes: IntGauge,
    pub tasks_by_status: IntGaugeVec,
    pub claims_waiting: IntGauge,
    pub claims_undelivered: IntCounter,
    pub events_by_topic: IntCounterVec,
    pub rpc_duration_seconds: HistogramVec,
    pub core_queue_depth: IntGauge,
    pub shed_total: IntCounterVec,
    /// The core thread's waits for work by how they ended: `found` (work came while it spun),
    /// `missed` (the spin window passed, then it slept), `slept` (it slept without spinning).
    pub core_waits_total: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    /// 1 when a sentence encoder ranks Find (hybrid), 0 when Find ranks lexically.
    pub search_model_loaded: IntGauge,
    /// Card vectors the core holds (every model's).
    pub card_vectors: IntGauge,
    /// The embedding workers' jobs by kind (card, query) and outcome (encoded, inline, cached,
    /// shed, timeout, failed).
    pub embed_total: IntCounterVec,
    /// Time the encoder took for one card or query.
    pub embed_seconds: HistogramVec,
    /// Requests to the external embedder (`--embedder`) by outcome (ok, failed, timeout).
    pub embedder_requests_total: IntCounterVec,
    /// Texts the built-in encoder took over from a failing external embedder, by kind.
    pub embed_fallback_total: IntCounterVec,
    /// Cards the background pass sent to be encoded because they had no vector of the primary model.
    pub embed_backfill_total: IntCounter,
    /// Keep-alive stream messages answered, per stream (`registry`, `lease`).
    pub keepalive_messages_total: IntCounterVec,
    /// Items (heartbeats, renewals) in keep-alive messages, per stream and result (`ok`, `error`).
    pub keepalive_items_total: IntCounterVec,
    /// Every call served, all methods together (the dashboard's calls/s; not exported, as
    /// `agentkeeper_rpc_total` already is its sum).
    pub calls_total: IntCounter,
    /// A cluster node's gauges, registered when the node first publishes them.
    cluster: std::sync::OnceLock<ClusterMetrics>,
    /// Consensus messages and forwarded writes dropped because a peer's queue was full.
    pub cluster_peer_dropped_total: IntCounter,
    /// Snapshots a cluster node wrote (taken, or installed from its leader).
    pub cluster_snapshots_total: IntCounter,
    /// A cluster node's writes, from proposal (or forward) to applied, in seconds.
    cluster_proposal_seconds: Histogram,
}

/// What a cluster node exports: where consensus is and how often leadership moved.
struct ClusterMetrics {
    term: IntGauge,
    leader: IntGauge,
    is_leader: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    leader_changes: IntCounter,
}

/// One keep-alive stream's counters (`Metrics::keepalive_counters`).
pub struct KeepAliveCounters {
    messages: IntCounter,
    ok: IntCounter,
    failed: IntCounter,
}

impl KeepAliveCounters {
    /// Counts one answered message and its items by result.
    pub fn count(&self, ok: usize, failed: usize) {
        self.messages.inc();
        self.ok.inc_by(ok as u64);
        if failed > 0 {
            self.failed.inc_by(failed as u64);
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique gauge");
            g
        };
        let agents_alive = gauge("agentkeeper_agents_alive", "Agents currently ALIVE or UNREACHABLE");
        let leases_active = gauge("agentkeeper_leases_active", "Leases currently held");
        let election_groups = gauge("agentkeeper_election_groups", "Election groups known");
        let policies = gauge("agentkeeper_policies", "Entitlement policies stored");
        let watchers = gauge("agentkeeper_watchers", "Open watch streams");
        let events_total = gauge(
            "agentkeeper_events_total",
            "Events emitted since start (the last sequence number)",
        );
        let agents_by_status =
            IntGaugeVec::new(Opts::new("agentkeeper_agents", "Known agents by status"), &["status"]).expect("valid");
        let rpc_total = IntCounterVec::new(
            Opts::new("agentkeeper_rpc_total", "gRPC calls served per method"),
            &["method"],
        )
        .expect("valid");
        let rpc_errors_total = IntCounterVec::new(
            Opts::new(
                "agentkeeper_rpc_errors_total",
                "gRPC calls answered with an error, per method and code",
            ),
            &["method", "code"],
        )
        .expect("valid");
        let watch_overflows = IntCounter::new(
            "agentkeeper_watch_overflows_total",
            "Watch streams cut off because their buffer overflowed",
        )
        .expect("valid");
        let batch_commands = Histogram::with_opts(
            HistogramOpts::new("agentkeeper_core_batch_commands", "Commands applied per core batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
        )
        .expect("valid");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "agentkeeper_core_batch_seconds",
                "Time the core thread spent on one batch",
            )
            .buckets(prometheus::exponential_buckets(1e-6, 4.0, 10).expect("valid buckets")),
        )
        .expect("valid");
        let store_syncs = IntCounter::new(
            "agentkeeper_store_syncs_total",
            "Log writes made durable (one fdatasync each)",
        )
        .expect("valid");
        let store_bytes = IntCounter::new("agentkeeper_store_bytes_total", "Bytes appended to the log").expect("valid");
        let store_sync_seconds = Histogram::with_opts(
            HistogramOpts::new("agentkeeper_store_sync_seconds", "Time of one log write + fdatasync")
                .buckets(prometheus::exponential_buckets(1e-5, 2.5, 12).expect("valid buckets")),
        )
        .expect("valid");
        let snapshot_pause_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "agentkeeper_snapshot_pause_seconds",
                "Time the core thread paused to take a snapshot",
            )
            .buckets(prometheus::exponential_buckets(1e-4, 2.5, 12).expect("valid buckets")),
        )
        .expect("valid");
        let snapshot_bytes = gauge("agentkeeper_snapshot_bytes", "Size of the last snapshot");
        let claims_waiting = gauge("agentkeeper_claims_waiting", "ClaimTask calls waiting for a task");
        let tasks_by_status =
            IntGaugeVec::new(Opts::new("agentkeeper_tasks", "Tasks held, by status"), &["status"]).expect("valid");
        let claims_undelivered = IntCounter::new(
            "agentkeeper_claims_undelivered_total",
            "Claims whose caller was gone: the task went back to PENDING",
        )
        .expect("valid");
        let events_by_topic = IntCounterVec::new(
            Opts::new(
                "agentkeeper_events_by_topic_total",
                "Events emitted since the daemon started, by topic (events replayed from the data dir \
                 at start-up not included). topic=\"lease.expired\" counts lease expirations, \
                 topic=\"agent.died\" agent deaths (missed heartbeats and Deregister alike)",
            ),
            &["topic"],
        )
        .expect("valid");
        for topic in Topic::ALL {
            events_by_topic.with_label_values(&[topic.as_str()]);
        }
        let rpc_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "agentkeeper_rpc_duration_seconds",
                "gRPC call latency per method, from the request's headers to the response's \
                 (for Watch and WatchElection: until the stream is open)",
            )
            .buckets(RPC_SECONDS_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid");
        let core_queue_depth = gauge(
            "agentkeeper_core_queue_depth",
            "Commands waiting in the core's queue after the last batch (at most --core-queue-max): \
             above zero, calls arrive faster than the core applies them",
        );
        let shed_total = IntCounterVec::new(
            Opts::new(
                "agentkeeper_shed_total",
                "Calls answered RESOURCE_EXHAUSTED at once because the core's queue was full, per method",
            ),
            &["method"],
        )
        .expect("valid");
        let core_waits_total = IntCounterVec::new(
            Opts::new(
                "agentkeeper_core_waits_total",
                "The core thread's waits for work after a batch, by how they ended: found (work \
                 came while it spun, --core-spin), missed (the window passed, then it slept), \
                 slept (it slept without spinning: spinning had not paid off lately, traffic is \
                 dense, or spinning is off)",
            ),
            &["result"],
        )
        .expect("valid");
        let connections_open = gauge("agentkeeper_connections_open", "Open gRPC connections");
        let connections_refused = IntCounter::new(
            "agentkeeper_connections_refused_total",
            "gRPC connections closed at once because --connections-max were open",
        )
        .expect("valid");
        let search_model_loaded = gauge(
            "agentkeeper_search_model_loaded",
            "1 when a sentence encoder ranks Find with card and query vectors, 0 when Find ranks lexically",
        );
        let card_vectors = gauge(
            "agentkeeper_card_vectors",
            "Card vectors the core holds, of every model: live agents whose card Find can rank by meaning",
        );
        let embed_total = IntCounterVec::new(
            Opts::new(
                "agentkeeper_embed_total",
                "Embedding jobs by kind (card, query) and outcome (encoded; inline: a card text seen \
                 before, its vector sent inside the card's Register; cached: a card text seen before \
                 or being encoded, its vector sent as a command of its own; shed: a queue was full; \
                 timeout: a Find stopped waiting; failed)",
            ),
            &["kind", "outcome"],
        )
        .expect("valid");
        let embed_seconds = HistogramVec::new(
            HistogramOpts::new(
                "agentkeeper_embed_seconds",
                "Time the sentence encoder took for one card or query",
            )
            .buckets(prometheus::exponential_buckets(1e-3, 2.0, 12).expect("valid buckets")),
            &["kind"],
        )
        .expect("valid");
        let embedder_requests_total = IntCounterVec::new(
            Opts::new(
                "agentkeeper_embedder_requests_total",
                "Requests to the external embedder (--embedder) by outcome (ok, failed, timeout)",
            ),
            &["outcome"],
        )
        .expect("valid");
        let embed_fallback_total = IntCounterVec::new(
            Opts::new(
                "agentkeeper_embed_fallback_total",
                "Texts (card, query) the built-in encoder embedded because the external embedder failed or was in an outage",
            ),
            &["kind"],
        )
        .expect("valid");
        let embed_backfill_total = IntCounter::new(
            "agentkeeper_embed_backfill_total",
            "Cards the background pass sent to be encoded because they had no vector of the primary model",
        )
        .expect("valid");
        let keepalive_messages_total = IntCounterVec::new(
            Opts::new(
                "agentkeeper_keepalive_messages_total",
                "Keep-alive stream messages answered, per stream (registry: heartbeats, lease: renewals)",
            ),
            &["stream"],
        )
        .expect("valid");
        let keepalive_items_total = IntCounterVec::new(
            Opts::new(
                "agentkeeper_keepalive_items_total",
                "Heartbeats and renewals carried by keep-alive messages, per stream and result (ok, error)",
            ),
            &["stream", "result"],
        )
        .expect("valid");
        for collector in [
            Box::new(shed_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(embed_total.clone()),
            Box::new(embed_seconds.clone()),
            Box::new(embedder_requests_total.clone()),
            Box::new(embed_fallback_total.clone()),
            Box::new(embed_backfill_total.clone()),
            Box::new(keepalive_messages_total.clone()),
            Box::new(keepalive_items_total.clone()),
            Box::new(core_waits_total.clone()),
            Box::new(connections_refused.clone()),
            Box::new(events_by_topic.clone()),
            Box::new(rpc_duration_seconds.clone()),
            Box::new(snapshot_pause_seconds.clone()),
            Box::new(store_syncs.clone()),
            Box::new(store_bytes.clone()),
            Box::new(store_sync_seconds.clone()),
            Box::new(agents_by_status.clone()),
            Box::new(rpc_total.clone()),
            Box::new(rpc_errors_total.clone()),
            Box::new(watch_overflows.clone()),
            Box::new(batch_commands.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(tasks_by_status.clone()),
            Box::new(claims_undelivered.clone()),
        ] {
            registry.register(collector).expect("unique collector");
        }
        Metrics {
            registry,
            agents_alive,
            agents_by_status,
            leases_active,
            election_groups,
            policies,
            watchers,
            events_total,
            rpc_total,
            rpc_errors_total,
            watch_overflows,
            batch_commands,
            batch_seconds,
            store_syncs,
            store_bytes,
            store_sync_seconds,
            snapshot_pause_seconds,
            snapshot_bytes,
            tasks_by_status,
            claims_waiting,
            claims_undelivered,
            events_by_topic,
            rpc_duration_seconds,
            core_queue_depth,
            shed_total,
            core_waits_total,
            connections_open,
            connections_refused,
            search_model_loaded,
            card_vectors,
            embed_total,
            embed_seconds,
            embedder_requests_total,
            embed_fallback_total,
            embed_backfill_total,
            keepalive_messages_total,
            keepalive_items_total,
            calls_total: IntCounter::new("agentkeeper_calls", "every call served").expect("valid counter"),
            cluster: std::sync::OnceLock::new(),
            cluster_peer_dropped_total: IntCounter::new(
                "agentkeeper_cluster_peer_dropped_total",
                "Consensus messages and forwarded writes dropped because a peer's queue was full",
            )
            .expect("valid counter"),
            cluster_proposal_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "agentkeeper_cluster_proposal_seconds",
                    "A cluster node's writes from their proposal (or forward to the leader) to their \
                     entry applied on this node (millisecond resolution)",
                )
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("valid histogram"),
            cluster_snapshots_total: IntCounter::new(
                "agentkeeper_cluster_snapshots_total",
                "Snapshots this cluster node wrote: taken every --snapshot-every entries, or installed from its leader",
            )
            .expect("valid counter"),
        }
    }

    /// Adds the events emitted since the last call: `emitted` and `published` are per-topic
    /// totals in `Topic::ALL` order; `published` becomes `emitted` (driver thread, per batch).
    pub fn publish_events(&self, emitted: &[u64; Topic::ALL.len()], published: &mut [u64; Topic::ALL.len()]) {
        for ((topic, now), before) in Topic::ALL.iter().zip(emitted).zip(published.iter_mut()) {
            if now > before {
                self.events_by_topic
                    .with_label_values(&[topic.as_str()])
                    .inc_by(now - *before);
                *before = *now;
            }
        }
    }

    pub fn observe_snapshot(&self, pause: Duration) {
        self.snapshot_pause_seconds.observe(pause.as_secs_f64());
    }

    pub fn observe_sync(&self, bytes: usize, elapsed: Duration) {
        self.store_syncs.inc();
        self.store_bytes.inc_by(bytes as u64);
        self.store_sync_seconds.observe(elapsed.as_secs_f64());
    }

    /// Copies the core's counts into the gauges (driver thread, after each batch).
    pub fn publish_core(&self, stats: &CoreStats) {
        let set = |gauge: &IntGauge, value: usize| gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        set(&self.agents_alive, stats.agents_alive + stats.agents_unreachable);
        set(&self.agents_by_status.with_label_values(&["alive"]), stats.agents_alive);
        set(
            &self.agents_by_status.with_label_values(&["unreachable"]),
            stats.agents_unreachable,
        );
        set(&self.agents_by_status.with_label_values(&["dead"]), stats.agents_dead);
        set(&self.leases_active, stats.leases);
        set(&self.election_groups, stats.groups);
        set(&self.policies, stats.policies);
        set(&self.watchers, stats.watchers);
        for (status, count) in [
            ("pending", stats.tasks_pending),
            ("claimed", stats.tasks_claimed),
            ("completed", stats.tasks_completed),
            ("dead", stats.tasks_dead),
        ] {
            set(&self.tasks_by_status.with_label_values(&[status]), count);
        }
        set(&self.claims_waiting, stats.claims_waiting);
        set(&self.card_vectors, stats.card_vectors);
        self.events_total
            .set(i64::try_from(stats.sequence_next.saturating_sub(1)).unwrap_or(i64::MAX));
    }

    pub fn observe_batch(&self, commands: usize, elapsed: Duration) {
        if commands > 0 {
            self.batch_commands.observe(commands as f64);
        }
        self.batch_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts one served call (and its error class, if any).
    pub fn count_rpc(&self, method: &str, error: Option<&str>) {
        self.rpc_total.with_label_values(&[method]).inc();
        self.calls_total.inc();
        if let Some(code) = error {
            self.rpc_errors_total.with_label_values(&[method, code]).inc();
        }
    }

    /// The counters of one keep-alive stream of kind `stream`, looked up once when it opens
    /// rather than by label on every message.
    pub fn keepalive_counters(&self, stream: &str) -> KeepAliveCounters {
        KeepAliveCounters {
            messages: self.keepalive_messages_total.with_label_values(&[stream]),
            ok: self.keepalive_items_total.with_label_values(&[stream, "ok"]),
            failed: self.keepalive_items_total.with_label_values(&[stream, "error"]),
        }
    }

    /// Copies a cluster node's consensus status into its gauges (driver thread, per batch); the
    /// first call registers them, so a single node exports none.
    /// True on a cluster node that does not lead the cluster now, as the driver last published
    /// (false on a single node, and on a cluster node before its first status).
    pub fn is_cluster_follower(&self) -> bool {
        self.cluster.get().is_some_and(|cluster| cluster.is_leader.get() == 0)
    }

    pub fn publish_cluster(&self, status: &crate::cluster::NodeStatus) {
        let cluster = self.cluster.get_or_init(|| {
            let gauge = |name: &str, help: &str| {
                let g = IntGauge::new(name, help).expect("valid gauge");
                self.registry.register(Box::new(g.clone())).expect("unique gauge");
                g
            };
            let leader_changes = IntCounter::new(
                "agentkeeper_cluster_leader_changes_total",
                "Times this node saw the cluster's leader change (none known counts as a change)",
            )
            .expect("valid counter");
            for collector in [
                leader_changes.clone(),
                self.cluster_peer_dropped_total.clone(),
                self.cluster_snapshots_total.clone(),
            ] {
                self.registry.register(Box::new(collector)).expect("unique counter");
            }
            (self.registry)
                .register(Box::new(self.cluster_proposal_seconds.clone()))
                .expect("unique histogram");
            ClusterMetrics {
                term: gauge("agentkeeper_cluster_term", "The consensus term this node is in"),
                leader: gauge(
                    "agentkeeper_cluster_leader",
                    "The leader's node id as this node knows it (0: none)",
                ),
                is_leader: gauge("agentkeeper_cluster_is_leader", "1 while this node leads the cluster"),
                commit_index: gauge(
                    "agentkeeper_cluster_commit_index",
                    "The highest log index known committed",
                ),
                applied_index: gauge(
                    "agentkeeper_cluster_applied_index",
                    "The highest log index this node's core applied",
                ),
                leader_changes,
            }
        });
        let int = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        if int(status.leader) != cluster.leader.get() {
            cluster.leader_changes.inc();
        }
        cluster.term.set(int(status.term));
        cluster.leader.set(int(status.leader));
        cluster.is_leader.set(i64::from(status.leader == status.id));
        cluster.commit_index.set(int(status.commit));
        cluster.applied_index.set(int(status.applied));
    }

    /// One of a cluster node's writes answered after `waited_ms` (driver thread).
    pub fn observe_proposal(&self, waited_ms: u64) {
        self.cluster_proposal_seconds.observe(waited_ms as f64 / 1000.0);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeStatus, StateRole};

    #[test]
    fn a_node_is_a_cluster_follower_only_while_a_cluster_status_says_another_leads() {
        let metrics = Metrics::new();
        assert!(!metrics.is_cluster_follower(), "a single node");
        let status = |leader: u64, role: StateRole| NodeStatus {
            id: 2,
            term: 3,
            role,
            leader,
            commit: 0,
            applied: 0,
        };
        metrics.publish_cluster(&status(1, StateRole::Follower));
        assert!(metrics.is_cluster_follower());
        metrics.publish_cluster(&status(2, StateRole::Leader));
        assert!(!metrics.is_cluster_follower());
        metrics.publish_cluster(&status(0, StateRole::Candidate));
        assert!(metrics.is_cluster_follower(), "no leader known: not this node");
    }
}
