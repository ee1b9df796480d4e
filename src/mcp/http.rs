//! `/mcp` on the HTTP port: the tools over MCP's Streamable HTTP transport, stateless (each POST
//! is one JSON-RPC exchange, answered as JSON; no session is kept between requests, so a host
//! that reconnects or a daemon that restarts needs nothing). With `--auth-tokens` the route takes
//! the same bearer tokens as gRPC, and each tool's call is admitted by the token's role.
//!
//! Architecture invariant: holds no state; the tools reach the core only through the gRPC
//! routes (`super::in_process`), never the driver directly.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::{GrpcChannel, Tools};

/// What `/mcp` serves.
pub type McpService = StreamableHttpService<Tools, NeverSessionManager>;

/// The `/mcp` service. `http_addr` is where the HTTP port listens: on a loopback address only
/// requests naming a loopback host are served (a web page that rebinds its name to 127.0.0.1
/// cannot drive the tools); on any other address every `Host` is (use `--auth-tokens` there).
pub fn service(channel: Arc<OnceLock<GrpcChannel>>, http_addr: Option<SocketAddr>) -> McpService {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true);
    if http_addr.is_some_and(|addr| !addr.ip().is_loopback()) {
        config = config.disable_allowed_hosts();
    }
    let tools = Tools::new(channel);
    // Stateless: no session is ever opened, so none is kept.
    let sessions = Arc::new(NeverSessionManager::default());
    StreamableHttpService::new(move || Ok(tools.clone()), sessions, config)
}
