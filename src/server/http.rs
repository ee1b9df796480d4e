//! The HTTP side: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and `/`, a plain page of
//! counts.
//!
//! Architecture invariant: it reads only the metrics' atomics and the daemon's phase, never the
//! core, so a busy core cannot slow a health probe and a scrape cannot slow the core.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tokio::net::TcpListener;

use super::health::{Phase, Serving};
use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>, serving: Serving) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || ready(serving.phase())))
        .route("/metrics", get(prometheus_text))
        .with_state(metrics)
}

/// Serves HTTP until `shutdown` resolves. Main starts it before recovery (so `/healthz` and a
/// 503 `/readyz` answer while a data dir is replayed) and stops it after gRPC has drained (so
/// `/readyz` says "shutting down" for as long as calls are finishing).
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, serving))
        .with_graceful_shutdown(shutdown)
        .await
}

/// 200 "ready" only while gRPC serves (recovery done); 503 before and once shutdown began.
async fn ready(phase: Phase) -> (StatusCode, &'static str) {
    match phase {
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
        Phase::Serving => (StatusCode::OK, "ready"),
        Phase::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

async fn prometheus_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
}

async fn dashboard(State(metrics): State<Arc<Metrics>>) -> Html<String> {
    let row = |label: &str, value: i64| format!("<tr><th>{label}</th><td>{value}</td></tr>");
    let rows = [
        row("Agents alive or unreachable", metrics.agents_alive.get()),
        row("Leases active", metrics.leases_active.get()),
        row("Election groups", metrics.election_groups.get()),
        row("Policies", metrics.policies.get()),
        row("Watch streams", metrics.watchers.get()),
        row("Events emitted", metrics.events_total.get()),
    ]
    .concat();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>AgentKeeper</title>\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <style>body{{font-family:system-ui,sans-serif;margin:2em}}th{{text-align:left;padding-right:2em}}</style>\
         </head><body><h1>AgentKeeper</h1><table>{rows}</table>\
         <p><a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a></p></body></html>"
    ))
}
