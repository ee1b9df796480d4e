//! The MCP server (Model Context Protocol, on the official `rmcp` SDK): the tools an LLM agent
//! uses to find peers, take leases with fencing tokens, check policies, work the task queue and
//! ask who leads a group (`tools`). Served over Streamable HTTP at `/mcp` on the HTTP port
//! (`http`) and over stdio by `agentkeeper mcp` (`stdio`).
//!
//! Architecture invariant: every tool is a call of the public gRPC API through a `GrpcChannel`,
//! either the daemon's own routes in process (so auth, roles, metrics and errors are exactly a
//! gRPC client's) or a connection to a running daemon; no tool decides anything itself, and no
//! tool registers or heartbeats (a model cannot keep a heartbeat going).

pub mod http;
pub mod stdio;
mod tools;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, tool_handler};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::server::Grpc;

/// The gRPC API as the tools call it: a tower service of HTTP/2 gRPC requests, boxed so that the
/// daemon's in-process routes and a client connection are one type. (Its error is a concrete
/// type: with a boxed error tonic's client futures fail the compiler's Send check.)
pub type GrpcChannel =
    BoxCloneSyncService<::http::Request<tonic::body::Body>, ::http::Response<tonic::body::Body>, std::io::Error>;

/// The daemon's own gRPC routes behind the layer every call passes (auth, timing, the size
/// limit's name), as a channel: a tool's call is then exactly a gRPC client's call.
pub fn in_process(grpc: Grpc) -> GrpcChannel {
    use tower_layer::Layer;
    let calls = grpc.layer.layer(grpc.routes);
    let calls = ServiceExt::<::http::Request<tonic::body::Body>>::map_err(calls, |never: Infallible| match never {});
    BoxCloneSyncService::new(calls)
}

/// A connection to a daemon (ctl's, with its bearer token) as a channel.
pub fn remote(connection: crate::ctl::Conn) -> GrpcChannel {
    let connection = connection
        .map_response(|response| response.map(tonic::body::Body::new))
        .map_err(std::io::Error::other);
    BoxCloneSyncService::new(connection)
}

/// The MCP server: its tools over a channel to the API. The channel is set once the core runs
/// (the HTTP port opens before recovery); until then a tool answers UNAVAILABLE.
#[derive(Clone)]
pub struct Tools {
    channel: Arc<OnceLock<GrpcChannel>>,
    tool_router: ToolRouter<Tools>,
}

impl Tools {
    pub fn new(channel: Arc<OnceLock<GrpcChannel>>) -> Self {
        Tools {
            channel,
            tool_router: Self::tool_router(),
        }
    }
}

/// What the server tells a host about itself at initialisation.
const INSTRUCTIONS: &str = "AgentKeeper coordinates a fleet of AI agents. Use find_agents to find a live \
peer by what it can do, acquire_lease before touching a shared resource (pass the fencing token it \
returns to whatever you write, and release_lease when done), check_policy before an action that \
needs permission, create_task/claim_task/complete_task/fail_task to share work through a queue, and \
current_leader to learn which agent leads a group. Errors name a gRPC status (NOT_FOUND, \
FAILED_PRECONDITION, PERMISSION_DENIED, INVALID_ARGUMENT, ...) and say what was wrong.";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentkeeper", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
