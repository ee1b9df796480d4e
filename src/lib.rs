//! AgentKeeper: a coordination daemon for fleets of AI agents.
//!
//! `core` is the deterministic, sans-IO state machine; `driver` is the one thread that owns it
//! (`idle`: how it waits for work); `embed` the sentence encoder that turns cards and queries
//! into vectors, off the core's thread; `server` speaks gRPC and HTTP around it; `metrics` is what
//! both publish; `proto` holds the generated wire types; `ctl` is the command-line client
//! (`agentkeeper ctl`); `mcp` the MCP server (its tools over the HTTP port and stdio); `limits` names every limit with its default and flag; `buggify` holds the
//! fault points of the I/O path (debug builds only); `config` layers the config file and the
//! environment under the flags; `notify` and `watchdog` speak to a service manager (systemd);
//! `probe` is the readiness check a container image runs.

pub mod buggify;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod core;
pub mod ctl;
pub mod driver;
pub mod embed;
pub mod idle;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod proto;
pub mod server;
pub mod store;
pub mod watchdog;
