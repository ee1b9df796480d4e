//! `agentkeeper mcp --endpoint HOST:PORT`: the tools over stdio, for desktop MCP hosts and IDEs
//! that start a server as a subprocess. A gRPC client of a running daemon, connected as ctl
//! connects (the same endpoint syntax, the same token).
//!
//! Architecture invariant: stdout carries the protocol and nothing else; a failure to start is
//! one line on stderr and a non-zero exit.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use rmcp::ServiceExt;

use super::{Tools, remote};

/// Serve the MCP tools on stdin/stdout, as a client of a running daemon.
#[derive(Args, Debug)]
pub struct McpArgs {
    /// The daemon's gRPC address, HOST:PORT (or an http:// URL).
    #[arg(long, default_value = "127.0.0.1:7070")]
    endpoint: String,

    /// How long one call may take (claim_task waits at most 30 s for a task).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// A bearer token for a daemon started with --auth-tokens (better: the AGENTKEEPER_TOKEN
    /// environment variable, which other users cannot read in the process list).
    #[arg(long, env = "AGENTKEEPER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Serves until the host closes stdin; the error is the one line to print on stderr.
pub fn run(args: McpArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(serve(args))
}

async fn serve(args: McpArgs) -> Result<(), String> {
    let connection = crate::ctl::connect(&args.endpoint, args.timeout, args.token.as_deref()).await?;
    let channel = Arc::new(OnceLock::from(remote(connection)));
    let running = Tools::new(channel)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("the MCP host's initialisation failed: {e}"))?;
    running
        .waiting()
        .await
        .map_err(|e| format!("the MCP server stopped: {e}"))?;
    Ok(())
}
