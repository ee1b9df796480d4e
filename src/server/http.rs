//! The HTTP side: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and the live dashboard
//! (`/`, `/api/overview`, a page of `/api/agents`, `/api/leases`, `/api/policies` or
//! `/api/elections`, `/api/events` and `/api/cluster`, see `dashboard`), the A2A cards (`/a2a/...`, see `a2a`),
//! and `/mcp`, the MCP tools (see
//! `crate::mcp`).
//!
//! Architecture invariant: health and metrics read only atomics and the daemon's phase, never
//! the core, so a busy core cannot slow a probe or a scrape; the dashboard asks the core through
//! the driver's queue like any client.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use super::a2a;
use super::auth::{self, Tokens};
use super::dashboard::{self, Dashboard};
use super::health::{Phase, Serving};
use crate::mcp::http::McpService;
use crate::metrics::Metrics;

/// With `tokens` (--auth-tokens), the dashboard's data and `/mcp` need a known bearer token (the
/// page itself holds no data and asks for one); each MCP tool's call is then admitted by the
/// token's role like the gRPC call it makes.
pub fn router(
    metrics: Arc<Metrics>,
    serving: Serving,
    dashboard: Dashboard,
    mcp: McpService,
    tokens: Option<Arc<Tokens>>,
) -> Router {
    let mut data = Router::new()
        .route("/api/overview", get(dashboard::overview))
        .route("/api/agents", get(dashboard::agents))
        .route("/api/leases", get(dashboard::leases))
        .route("/api/policies", get(dashboard::policies))
        .route("/api/elections", get(dashboard::elections))
        .route("/api/events", get(dashboard::events))
        .route("/api/cluster", get(dashboard::cluster))
        .route("/a2a/agents", get(a2a::http::agents))
        .route("/a2a/agents/{agent_id}/agent-card.json", get(a2a::http::agent_card))
        .with_state(dashboard);
    let mut agents = Router::new().nest_service("/mcp", mcp);
    if let Some(tokens) = tokens {
        data = auth::http_checked(data, Arc::clone(&tokens));
        agents = auth::http_checked(agents, tokens);
    }
    let pages = Router::new().route("/", get(dashboard::page)).merge(data).merge(agents);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || ready(serving.phase())))
        .route("/metrics", get(prometheus_text))
        .with_state(metrics)
        .merge(pages)
}

/// Serves HTTP until `shutdown` resolves. Main starts it before recovery (so `/healthz` and a
/// 503 `/readyz` answer while a data dir is replayed) and stops it after gRPC has drained (so
/// `/readyz` says "shutting down" for as long as calls are finishing).
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    serving: Serving,
    dashboard: Dashboard,
    mcp: McpService,
    tokens: Option<Arc<Tokens>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, serving, dashboard, mcp, tokens))
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
