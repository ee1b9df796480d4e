//! The live dashboard on the HTTP port: `/` (one page, embedded in the binary), `/api/overview`
//! (the core's Overview as JSON: counts and the first page of each list), one page of a list
//! from a cursor (`/api/agents`, `/api/leases`, `/api/policies`, `/api/elections`) and
//! `/api/events` (server-sent events: every core event from a sequence on, plus counts once a
//! second for the charts and, on a cluster node, the cluster's status once a second) and
//! `/api/cluster` (that status alone: ClusterService.Status's answer as JSON).
//!
//! Architecture invariant: the dashboard is a client of the core like any gRPC caller, through
//! the driver's bounded queue and an ordinary subscription; it never reads the core's state
//! directly, never asks for more than a page at a time (never the whole fleet), and a page that
//! cannot keep up is cut off like any slow watcher.

mod json;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_core::Stream;
use prometheus::IntGauge;
use tokio::sync::{mpsc, oneshot};

use super::cluster_status::ClusterStatus;
use super::subscription::{self, Subscription, UnwatchGuard};
use crate::core::machine::StreamEnd;
use crate::core::types::AgentStatus;
use crate::core::{Command, CoreError, ErrorCode, Event, Reply};
use crate::ctl::json::cluster_json;
use crate::driver::CoreHandle;
use crate::metrics::Metrics;

const PAGE: &str = include_str!("index.html");
/// Rows of a list the page receives at once: it pages through the rest by cursor.
const ROWS: u32 = 100;
/// How often the page gets fresh counts for its charts.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// After events, fresh counts follow this soon (the driver publishes them after each batch), so
/// the page's counts agree with its rows without waiting for the next second.
const STATS_AFTER_EVENTS: Duration = Duration::from_millis(200);

/// What the dashboard's handlers share: the core's handle and the cluster's status (both set
/// once the core runs; the HTTP port opens before recovery) and the metrics for the
/// once-a-second counts.
#[derive(Clone)]
pub struct Dashboard {
    core: Arc<OnceLock<CoreHandle>>,
    cluster: Arc<OnceLock<ClusterStatus>>,
    metrics: Arc<Metrics>,
    /// The labelled gauges, looked up once: reading them is then a load, never a map lookup.
    by_status: Arc<[IntGauge; 7]>,
    /// Events a page may have queued before it is cut off as too slow.
    buffer: usize,
}

const STATUS_LABELS: [&str; 7] = [
    "agents_alive",
    "agents_unreachable",
    "agents_dead",
    "tasks_pending",
    "tasks_claimed",
    "tasks_completed",
    "tasks_dead",
];

pub async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

pub async fn overview(State(dashboard): State<Dashboard>) -> Response {
    let command = Command::Overview {
        agents_max: ROWS,
        leases_max: ROWS,
    };
    match dashboard.ask(command).await {
        Ok(Reply::Overview(view)) => {
            let mut overview = json::overview(&view);
            // How Find ranks the search box: with the sentence encoder, or by words alone.
            let hybrid = dashboard.metrics.search_model_loaded.get() == 1;
            overview["search"] = if hybrid { "hybrid" } else { "lexical" }.into();
            axum::Json(overview).into_response()
        }
        Ok(other) => unexpected("Overview", &other),
        Err(response) => response,
    }
}

/// Where a list's page starts (the last key the previous page showed), and for agents the
/// status filter and search.
#[derive(serde::Deserialize)]
pub struct Cursor {
    #[serde(default)]
    after: String,
    /// ALIVE, UNREACHABLE or DEAD; empty: any.
    #[serde(default)]
    status: String,
    /// Find's query: ALIVE agents, best first.
    #[serde(default)]
    q: String,
}

pub async fn agents(State(dashboard): State<Dashboard>, Query(cursor): Query<Cursor>) -> Response {
    let status = match cursor.status.as_str() {
        "" => None,
        "ALIVE" => Some(AgentStatus::Alive),
        "UNREACHABLE" => Some(AgentStatus::Unreachable),
        "DEAD" => Some(AgentStatus::Dead),
        other => return (StatusCode::BAD_REQUEST, format!("unknown status {other:?}")).into_response(),
    };
    let command = Command::ListAgents {
        status,
        query: cursor.q,
        page_size: ROWS,
        page_token: cursor.after,
    };
    match dashboard.ask(command).await {
        Ok(Reply::AgentPage {
            agents,
            next_page_token,
            sequence_next,
        }) => axum::Json(json::agent_page(&agents, &next_page_token, sequence_next)).into_response(),
        Ok(other) => unexpected("ListAgents", &other),
        Err(response) => response,
    }
}

pub async fn leases(State(dashboard): State<Dashboard>, Query(cursor): Query<Cursor>) -> Response {
    let command = Command::ListLeases {
        prefix: String::new(),
        page_size: ROWS,
        page_token: cursor.after,
    };
    match dashboard.ask(command).await {
        Ok(Reply::Leases {
            leases,
            next_page_token,
        }) => axum::Json(json::page("leases", leases.iter().map(json::lease), &next_page_token)).into_response(),
        Ok(other) => unexpected("ListLeases", &other),
        Err(response) => response,
    }
}

pub async fn policies(State(dashboard): State<Dashboard>, Query(cursor): Query<Cursor>) -> Response {
    let command = Command::ListPolicies {
        subject_prefix: String::new(),
        page_size: ROWS,
        page_token: cursor.after,
    };
    match dashboard.ask(command).await {
        Ok(Reply::Policies {
            policies,
            next_page_token,
        }) => axum::Json(json::page(
            "policies",
            policies.iter().map(|p| json::policy(p)),
            &next_page_token,
        ))
        .into_response(),
        Ok(other) => unexpected("ListPolicies", &other),
        Err(response) => response,
    }
}

pub async fn elections(State(dashboard): State<Dashboard>, Query(cursor): Query<Cursor>) -> Response {
    let command = Command::ListElections {
        page_size: ROWS,
        page_token: cursor.after,
    };
    match dashboard.ask(command).await {
        Ok(Reply::Elections {
            groups,
            next_page_token,
        }) => axum::Json(json::page(
            "elections",
            groups.iter().map(json::group),
            &next_page_token,
        ))
        .into_response(),
        Ok(other) => unexpected("ListElections", &other),
        Err(response) => response,
    }
}

/// The cluster as this node sees it (the JSON of `ctl cluster status --json`); 404 on a single
/// node, which has no cluster to show.
pub async fn cluster(State(dashboard): State<Dashboard>) -> Response {
    let Some(status) = dashboard.cluster.get() else {
        return starting();
    };
    match status.answer().await {
        Ok(Some(answer)) => axum::Json(cluster_json(&answer)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, SINGLE_NODE).into_response(),
        Err(refusal) => error(&refusal),
    }
}

const SINGLE_NODE: &str = "this daemon runs as a single node (started without --initial-cluster)";

fn unexpected(command: &str, reply: &Reply) -> Response {
    error(&CoreError::new(
        ErrorCode::Unavailable,
        format!("the core answered {command} with {reply:?}"),
    ))
}

#[derive(serde::Deserialize)]
pub struct From {
    /// The first sequence to send (the overview's `sequence_next`); 0: live events only.
    #[serde(default)]
    from: u64,
}

pub async fn events(State(dashboard): State<Dashboard>, Query(From { from }): Query<From>) -> Response {
    let Some(core) = dashboard.core.get().cloned() else {
        return starting();
    };
    let command = Command::Watch {
        topics: Vec::new(),
        from_sequence: from,
    };
    let Subscription {
        reply,
        live,
        end,
        guard,
    } = match subscription::open(&core, dashboard.buffer, command).await {
        Ok(opened) => opened,
        Err(refusal) => return error(&refusal),
    };
    let replay = match reply {
        Reply::Watching { replay, .. } => replay,
        _ => Vec::new(),
    };
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only a cluster node has a cluster to show; a single node's page never asks.
    let cluster = (dashboard.cluster.get()).filter(|status| status.clustered).cloned();
    let feed = Feed {
        replay: replay.into_iter(),
        live,
        end,
        tick,
        soon: None,
        asking: cluster.as_ref().map(ask_cluster),
        cluster,
        metrics: dashboard.metrics,
        by_status: dashboard.by_status,
        done: false,
        _unwatch: guard,
    };
    Sse::new(feed).keep_alive(KeepAlive::default()).into_response()
}

impl Dashboard {
    /// One read command through the driver's queue; an error is already the HTTP answer.
    /// One command through the driver's queue; a refusal as the HTTP answer to give.
    pub(crate) async fn ask(&self, command: Command) -> Result<Reply, Response> {
        let Some(core) = self.core.get().cloned() else {
            return Err(starting());
        };
        core.call(command).await.map_err(|refusal| error(&refusal))
    }

    pub fn new(
        core: Arc<OnceLock<CoreHandle>>,
        cluster: Arc<OnceLock<ClusterStatus>>,
        metrics: Arc<Metrics>,
        buffer: usize,
    ) -> Self {
        assert!(buffer > 0, "a page's buffer holds at least one event");
        let agents = |status: &str| metrics.agents_by_status.with_label_values(&[status]);
        let tasks = |status: &str| metrics.tasks_by_status.with_label_values(&[status]);
        // In STATUS_LABELS' order.
        let by_status = Arc::new([
            agents("alive"),
            agents("unreachable"),
            agents("dead"),
            tasks("pending"),
            tasks("claimed"),
            tasks("completed"),
            tasks("dead"),
        ]);
        Dashboard {
            core,
            cluster,
            metrics,
            by_status,
            buffer,
        }
    }
}

/// The HTTP port opens before recovery; the core's handle is set once it runs.
fn starting() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "starting: the core is not running yet").into_response()
}

fn error(error: &CoreError) -> Response {
    let status = match error.code {
        ErrorCode::ResourceExhausted | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::InvalidArgument | ErrorCode::OutOfRange => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, error.message.clone()).into_response()
}

/// The cluster's status as a `cluster` event; None when the node could not say (its queue
/// full, or stopping): the next second asks again.
type ClusterAnswer = Pin<Box<dyn Future<Output = Option<SseEvent>> + Send>>;

fn ask_cluster(status: &ClusterStatus) -> ClusterAnswer {
    let status = status.clone();
    Box::pin(async move {
        let answer = status.answer().await.ok().flatten()?;
        Some(
            SseEvent::default()
                .event("cluster")
                .data(cluster_json(&answer).to_string()),
        )
    })
}

/// One page's stream: the replay, then live events, with counts once a second (and on a
/// cluster node the cluster's status, at once and then once a second); after the daemon's
/// last word (a page too slow, or shutdown) an `end` event, then nothing.
struct Feed {
    replay: std::vec::IntoIter<Arc<Event>>,
    live: mpsc::Receiver<Arc<Event>>,
    end: oneshot::Receiver<StreamEnd>,
    tick: tokio::time::Interval,
    /// Armed by the first event after a stats message: counts follow shortly.
    soon: Option<Pin<Box<tokio::time::Sleep>>>,
    /// On a cluster node: how to ask for its status, and the question in flight (at most one).
    cluster: Option<ClusterStatus>,
    asking: Option<ClusterAnswer>,
    metrics: Arc<Metrics>,
    by_status: Arc<[IntGauge; 7]>,
    done: bool,
    _unwatch: UnwatchGuard,
}

impl Feed {
    fn stats(&self) -> SseEvent {
        let m = &self.metrics;
        let mut counts = serde_json::json!({
            "leases": m.leases_active.get(),
            "groups": m.election_groups.get(),
            "policies": m.policies.get(),
            "watchers": m.watchers.get(),
            "claims_waiting": m.claims_waiting.get(),
        });
        for (label, gauge) in STATUS_LABELS.iter().zip(self.by_status.iter()) {
            counts[*label] = gauge.get().into();
        }
        let data = serde_json::json!({
            "calls": m.calls_total.get(),
            "events": m.events_total.get(),
            "counts": counts,
        });
        SseEvent::default().event("stats").data(data.to_string())
    }
}

fn core_event(event: &Event) -> SseEvent {
    SseEvent::default()
        .event("core")
        .id(event.sequence.to_string())
        .data(json::event(event).to_string())
}

impl Stream for Feed {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // Counts and the cluster's status first, so that a busy event stream cannot starve them.
        if let Some(asking) = self.asking.as_mut()
            && let Poll::Ready(answer) = asking.as_mut().poll(cx)
        {
            self.asking = None;
            if let Some(event) = answer {
                return Poll::Ready(Some(Ok(event)));
            }
        }
        let soon_due = self.soon.as_mut().is_some_and(|soon| soon.as_mut().poll(cx).is_ready());
        let tick_due = self.tick.poll_tick(cx).is_ready();
        if tick_due && self.asking.is_none() {
            // Polled on the next call: a stream is polled again after every item it gives.
            self.asking = self.cluster.as_ref().map(ask_cluster);
        }
        if tick_due || soon_due {
            self.soon = None;
            return Poll::Ready(Some(Ok(self.stats())));
        }
        if let Some(event) = self.replay.next() {
            return Poll::Ready(Some(Ok(core_event(&event))));
        }
        match self.live.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                if self.soon.is_none() {
                    let mut soon = Box::pin(tokio::time::sleep(STATS_AFTER_EVENTS));
                    // Registers the waker: the stream is polled again when it is due.
                    let _ = soon.as_mut().poll(cx);
                    self.soon = Some(soon);
                }
                Poll::Ready(Some(Ok(core_event(&event))))
            }
            Poll::Ready(None) => {
                // The driver sets the last word before it drops the buffer's sender.
                self.done = true;
                let message = match self.end.try_recv() {
                    Ok(end) => end.message,
                    Err(_) => "the stream ended".to_string(),
                };
                let data = serde_json::json!({ "message": message }).to_string();
                Poll::Ready(Some(Ok(SseEvent::default().event("end").data(data))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
