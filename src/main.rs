//! `agentkeeper`: flags, start-up, signals. Binds the ports, starts the core's driver thread and
//! the network runtime, and shuts all of it down gracefully on SIGTERM/SIGINT; tells a service
//! manager (systemd's notify protocol) where it is in that life.
//!
//! Architecture invariant: main wires things together and owns process concerns (exit codes,
//! logs, signals); it holds no state of its own and never touches the core.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::watch;

use agentkeeper::clock::Clock;
use agentkeeper::config;
use agentkeeper::core::machine::{Input, Machine};
use agentkeeper::core::{Core, CoreConfig};
use agentkeeper::driver::{self, Request};
use agentkeeper::embed::{self, Embedder, SentenceEncoder};
use agentkeeper::limits::Limits;
use agentkeeper::metrics::Metrics;
use agentkeeper::notify::{self, Notifier};
use agentkeeper::server;
use agentkeeper::store::Store;
use agentkeeper::watchdog;

/// The allocator: a command is allocated on a net thread and freed on the core thread, its answer
/// the other way; glibc's malloc took an arena lock (a futex wait and wake) for each such free,
/// mimalloc frees into the owner's list without one (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls in flight get this long to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `agentkeeper --version`: the release and the commit it was built from (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AGENTKEEPER_GIT_COMMIT"),
    ")"
);

/// The exit status for a configuration that cannot work (a bad flag, key or value): the
/// systemd unit does not restart on it (`RestartPreventExitStatus=2`), as a retry cannot help.
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "agentkeeper",
    version = VERSION,
    about = "A coordination daemon for fleets of AI agents: registry, \
    heartbeats, leases with fencing tokens, leader elections, entitlements and an event bus over gRPC.",
    after_help = "With no command, runs the daemon. `agentkeeper ctl --help` lists the client's commands. \
    Every flag that takes a value can also be set by its AGENTKEEPER_* variable or, under the \
    flag's name, in the --config file; a flag beats its variable, which beats the file.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Tool>,

    #[command(flatten)]
    flags: Flags,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// Inspect and change a running daemon (agents, policies, tasks, elections, live events).
    Ctl(agentkeeper::ctl::CtlArgs),
    /// Serve the MCP tools on stdin/stdout for an MCP host (an IDE, a desktop assistant), as a
    /// client of a running daemon.
    Mcp(agentkeeper::mcp::stdio::McpArgs),
    /// Ask a daemon's HTTP port whether it is ready (GET /readyz): exit 0 if so, 1 if not
    /// (a container healthcheck; the image has no curl).
    Probe(agentkeeper::probe::ProbeArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `agentkeeper man | man -l -`; with --dir, write one page
    /// per command there instead (agentkeeper.1, agentkeeper-ctl.1, agentkeeper-ctl-agents.1, ...).
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// The daemon's flags.
#[derive(Args, Debug)]
struct Flags {
    /// Read settings from this TOML file: each key a flag's name (`metrics-addr = ":9090"`).
    /// Flags and AGENTKEEPER_* variables override it; an unknown key or a bad value is an error
    /// naming the key and its line.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Print the effective configuration (flags, variables, file and defaults merged, each
    /// value with where it came from) as a file --config reads, and exit.
    #[arg(long)]
    print_config: bool,

    /// gRPC listen address, HOST:PORT. A Go-style ":PORT" listens on every interface.
    #[arg(long, default_value = "127.0.0.1:7070", value_parser = parse_addr)]
    addr: SocketAddr,

    /// Also serve gRPC on this Unix domain socket, for sidecars on the same host: plaintext,
    /// guarded by the file's mode and owner; served by the same transport as TCP (io_uring or
    /// epoll, see --io). A socket file left behind with nothing listening is replaced; one in use,
    /// or a file that is not a socket, stops the start-up. The file is removed at shutdown.
    #[arg(long, value_name = "PATH")]
    uds: Option<std::path::PathBuf>,

    /// Permission bits of the --uds socket file, octal (0660: owner and group may connect).
    /// Default: as the umask leaves them.
    #[arg(long, value_name = "MODE", requires = "uds", value_parser = server::uds::parse_mode)]
    uds_mode: Option<u32>,

    /// Owner of the --uds socket file: USER, USER:GROUP or :GROUP, by name or number (changing
    /// the user needs privileges; a group the daemon's user belongs to does not).
    #[arg(long, value_name = "USER:GROUP", requires = "uds", value_parser = server::uds::parse_owner)]
    uds_owner: Option<server::uds::Owner>,

    /// Serve gRPC on --uds only: no TCP listener for gRPC (--addr must not be given).
    #[arg(long, requires = "uds", conflicts_with = "addr")]
    uds_only: bool,

    /// HTTP address for the dashboard (/), /healthz, /readyz and /metrics. When not given and
    /// 127.0.0.1:9090 is taken, the daemon warns and serves gRPC only.
    #[arg(long, value_parser = parse_addr)]
    metrics_addr: Option<SocketAddr>,

    /// Network threads serving gRPC (the core has its own thread besides). One fits a 2-core
    /// machine: one core for the network, one for the state machine. With io_uring each is a
    /// ring of its own with its own listener (SO_REUSEPORT); HTTP then runs on one more thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    net_threads: u16,

    /// After a batch, the core thread keeps polling for the next request this long (yielding the
    /// CPU to anything else runnable) before it sleeps: a call that lands within it skips waking
    /// a sleeping thread, ~100 µs of a sequential call on a VM. Adaptive: after a few windows
    /// with nothing in them it sleeps at once, and under dense traffic (the next request there
    /// at once, spin after spin) it sleeps too, letting requests gather into batches. It costs
    /// CPU while it polls (at most one core under steady traffic); 0 turns it off (e.g. 0,
    /// 50us, 200us).
    #[arg(long, default_value = "200us", value_parser = humantime::parse_duration)]
    core_spin: Duration,

    /// How the network threads do I/O: io_uring (tokio-uring), epoll (tokio), or auto: io_uring
    /// where the kernel allows it, else epoll with one log line saying why.
    #[arg(long, value_enum, default_value_t = IoKind::Auto)]
    io: IoKind,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive like "agentkeeper=debug".
    #[arg(long, default_value = "info")]
    log_level: String,

    /// Where time comes from: the real clock, or a manual clock that stands still until a client
    /// calls ClockService.Advance (for deterministic tests of code that uses AgentKeeper).
    #[arg(long, value_enum, default_value_t = ClockKind::Real)]
    clock: ClockKind,

    /// Keep state in this directory: every change is logged and made durable before its call is
    /// answered, and a restart (even after kill -9) rebuilds everything. Default: in memory.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,

    /// With --data-dir: take a snapshot after this many logged changes, which bounds the log
    /// and the restart time (the snapshot is encoded on the core thread, written by another).
    /// A cluster node also compacts its consensus log behind it; a node that lags further
    /// than half of it behind catches up from the leader's snapshot.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,

    /// Seed for ids and hashing. The same seed and the same calls give the same agent ids.
    /// Default: drawn from the operating system at start-up.
    #[arg(long)]
    seed: Option<u64>,

    /// How long a DEAD agent stays visible to GetAgent before it is forgotten (e.g. 90s, 1h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    dead_retention: Duration,

    /// Recent events kept for Watch's from_sequence resume.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    events_retained: u64,

    /// Events one watch stream may have queued before it is cut off as too slow.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    watch_buffer: u64,

    /// How long COMPLETED and DEAD tasks stay visible to GetTask and ListTasks (e.g. 24h, 30m).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    task_retention: Duration,

    /// The longest a ClaimTask call waits for a task when none is pending; an empty answer then
    /// tells the worker to ask again. A call with a deadline is answered just before it. The
    /// default is long because v1 clients claim without a deadline and expect to block.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    claim_wait_max: Duration,

    /// Require a bearer token on every call: FILE has one `ROLE TOKEN` per line, ROLE one of
    /// admin, orchestrator, agent, reader. Without it, every client may call everything (v1).
    #[arg(long, value_name = "FILE")]
    auth_tokens: Option<std::path::PathBuf>,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key. TLS runs on the
    /// epoll transport: with --io auto it is chosen, with --io uring it is an error.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// With --tls-cert: require client certificates signed by this CA (PEM), i.e. mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,

    /// Once the daemon serves (after any recovery), write the bound addresses to this file as
    /// JSON, {"grpc":"127.0.0.1:41234","http":"127.0.0.1:41235","pid":1234} (http null without
    /// HTTP), atomically; removed when shutdown begins. For supervisors and tests that start the
    /// daemon on port 0.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<std::path::PathBuf>,

    /// The sentence encoder Find ranks with (a directory holding all-MiniLM-L6-v2's
    /// config.json, tokenizer.json and model.safetensors, or its all-minilm-l6-v2/). Default:
    /// ./models, models/ beside the binary, /usr/share/agentkeeper/models; without one Find
    /// ranks lexically, as it does with `--search-model off`. `make models` installs it.
    #[arg(long, value_name = "DIR|off")]
    search_model: Option<std::path::PathBuf>,

    /// Threads that run the sentence encoder for registered cards and Find's queries.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    embed_threads: u64,

    /// An OpenAI-compatible embeddings endpoint (Ollama, vLLM, text-embeddings-inference, a
    /// hosted API) that computes card and query vectors instead of the built-in encoder, e.g.
    /// http://localhost:11434/v1/embeddings (a bare host gets /v1/embeddings). The built-in
    /// encoder, when installed, stands in while it fails. Its API key, if it needs one, is read
    /// from AGENTKEEPER_EMBEDDER_API_KEY and sent as a bearer token.
    #[arg(long, value_name = "URL", requires = "embedder_model")]
    embedder: Option<String>,

    /// The external embedder's model (the request's `model` field), e.g. nomic-embed-text; the
    /// core keeps its vectors under this name, apart from any other model's.
    #[arg(long, value_name = "NAME", requires = "embedder")]
    embedder_model: Option<String>,

    /// How long one request to the external embedder may take (a query's: 400 ms at most).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    embedder_timeout: Duration,

    #[command(flatten)]
    cluster: ClusterFlags,

    #[command(flatten)]
    limits: Limits,
}

/// A cluster node's flags: all three or none (a single node).
#[derive(Args, Debug)]
struct ClusterFlags {
    /// Run as node N of a cluster (with --peer-addr, --initial-cluster and --data-dir). N is
    /// this node's id in --initial-cluster. Restarting a node with its data dir rejoins it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: Option<u64>,

    /// Where this node listens for the other nodes' consensus traffic, HOST:PORT (":PORT" for
    /// every interface). Clients keep using --addr.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr)]
    peer_addr: Option<SocketAddr>,

    /// Every node's id and peer address, the same list on every node, e.g.
    /// "1=10.0.0.1:7071,2=10.0.0.2:7071,3=10.0.0.3:7071" (3 or 5 nodes survive losing 1 or 2).
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    initial_cluster: Option<String>,

    /// "new" to create the cluster --initial-cluster lists; "existing" to join a running one
    /// (add the node first: `agentkeeper ctl cluster add ID HOST:PORT`; --initial-cluster then
    /// lists the current members and this node, and this node learns the cluster from them).
    /// Read at a node's first start only: a restart rejoins the cluster its data dir belongs to.
    #[arg(long, value_enum, default_value_t = ClusterState::New, value_name = "new|existing")]
    initial_cluster_state: ClusterState,

    /// A cluster leader's heartbeat interval (followers that miss heartbeats for an election
    /// timeout elect another leader).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,

    /// How long a follower waits without hearing a leader before it stands for election (plus a
    /// random part up to as much again). About the time a failover takes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    election_timeout: Duration,

    /// Mutual TLS between the cluster's nodes: this node's certificate (PEM), which must name
    /// its host as --initial-cluster gives it; with --peer-tls-key and --peer-tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    peer_tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long, value_name = "FILE", requires = "peer_tls_cert")]
    peer_tls_key: Option<std::path::PathBuf>,

    /// The CA (PEM) that signed every node's certificate: peers are let in, and trusted, only
    /// with a certificate it signed.
    #[arg(long, value_name = "FILE", requires = "peer_tls_cert")]
    peer_tls_ca: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClusterState {
    New,
    Existing,
}

/// One consensus tick: heartbeat intervals and election timeouts are whole numbers of it.
const CLUSTER_TICK_MS: u64 = 50;

/// A cluster node's settings from its flags; None for a single node.
#[derive(Clone)]
struct ClusterStart {
    node_id: u64,
    peer_addr: SocketAddr,
    members: agentkeeper::cluster::InitialCluster,
    state: ClusterState,
    heartbeat_ticks: usize,
    election_ticks: usize,
    /// `--snapshot-every`: a snapshot after this many applied entries.
    snapshot_every: u64,
    /// `--peer-tls-*`: the peer port's TLS and the senders', mutual.
    tls: Option<(tonic::transport::ServerTlsConfig, tonic::transport::ClientTlsConfig)>,
}

impl ClusterFlags {
    fn resolve(&self, flags: &Flags) -> Result<Option<ClusterStart>, String> {
        let (node_id, peer_addr, list) = match (self.node_id, self.peer_addr, &self.initial_cluster) {
            (Some(node_id), Some(peer_addr), Some(list)) => (node_id, peer_addr, list),
            (None, None, None) => return Ok(None),
            _ => return Err("a cluster node needs all of --node-id, --peer-addr and --initial-cluster".into()),
        };
        let members =
            agentkeeper::cluster::InitialCluster::parse(list).map_err(|e| format!("--initial-cluster: {e}"))?;
        let Some(listed) = members.members.get(&node_id) else {
            return Err(format!(
                "--node-id {node_id} is not in --initial-cluster (it lists {:?})",
                members.voters()
            ));
        };
        if !listed.ends_with(&format!(":{}", peer_addr.port())) {
            tracing::warn!(%listed, %peer_addr, "--peer-addr's port differs from this node's address in --initial-cluster");
        }
        if flags.data_dir.is_none() {
            return Err("a cluster node needs --data-dir: its vote and log must survive a restart".into());
        }
        if flags.clock == ClockKind::Manual {
            return Err("--clock manual is for a single node: a cluster runs on its leader's real clock".into());
        }
        let ticks = |what: &str, duration: Duration| -> Result<usize, String> {
            let ticks = duration.as_millis() as u64 / CLUSTER_TICK_MS;
            (ticks >= 1)
                .then_some(ticks as usize)
                .ok_or_else(|| format!("--{what} is at least {CLUSTER_TICK_MS}ms"))
        };
        let heartbeat_ticks = ticks("heartbeat-interval", self.heartbeat_interval)?;
        let election_ticks = ticks("election-timeout", self.election_timeout)?;
        if election_ticks <= heartbeat_ticks * 2 {
            return Err("--election-timeout must be more than twice --heartbeat-interval (10x is usual)".into());
        }
        Ok(Some(ClusterStart {
            node_id,
            peer_addr,
            members,
            state: self.initial_cluster_state,
            heartbeat_ticks,
            election_ticks,
            snapshot_every: flags.snapshot_every,
            tls: match (&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(server::tls::peer_config(cert, key, ca)?),
                _ => None,
            },
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IoKind {
    Auto,
    Uring,
    Epoll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClockKind {
    Real,
    Manual,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Parses HOST:PORT, also the Go-style ":PORT" (every interface) and "localhost:PORT".
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.replacen("localhost:", "127.0.0.1:", 1),
    };
    full.parse()
        .map_err(|_| format!("{text:?} is not HOST:PORT (for example 127.0.0.1:7070 or :7070)"))
}

fn init_logs(flags: &Flags) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&flags.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", flags.log_level))?;
    // Colour only for a person at a terminal; log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match flags.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[allow(clippy::disallowed_methods)] // the daemon's seed is drawn here, once
fn seed(flags: &Flags) -> u64 {
    flags
        .seed
        .unwrap_or_else(|| getrandom::u64().expect("the operating system RNG is available"))
}

/// The command line's definition: the flags, each with its AGENTKEEPER_* variable.
fn command() -> clap::Command {
    config::with_env(Cli::command())
}

fn main() -> ExitCode {
    let command = command();
    let layered = match config::parse(&command, std::env::args_os().collect()) {
        Ok(Ok(layered)) => layered,
        Ok(Err(message)) => {
            eprintln!("agentkeeper: {message}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
        Err(error) => error.exit(),
    };
    let cli = Cli::from_arg_matches(&layered.matches).unwrap_or_else(|error| error.exit());
    match cli.command {
        Some(Tool::Ctl(args)) => {
            return match agentkeeper::ctl::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("agentkeeper ctl: {message}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Tool::Mcp(args)) => {
            return match agentkeeper::mcp::stdio::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("agentkeeper mcp: {message}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Tool::Probe(args)) => {
            return match agentkeeper::probe::run(&args) {
                Ok(answer) => {
                    println!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("agentkeeper probe: not ready: {why}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Tool::Completions { shell }) => {
            clap_complete::generate(shell, &mut command.clone(), "agentkeeper", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Tool::Man { dir }) => {
            // No `help` command in the pages: `man` is the help, and it would name a page that
            // generate_to does not write.
            let pages = command.clone().disable_help_subcommand(true);
            let written = match dir {
                None => clap_mangen::Man::new(pages).render(&mut std::io::stdout()),
                Some(dir) => clap_mangen::generate_to(pages, dir),
            };
            return match written {
                // `agentkeeper man | head` is not a failure.
                Ok(()) => ExitCode::SUCCESS,
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("agentkeeper man: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let flags = cli.flags;
    if flags.print_config {
        print!("{}", config::render(&command, &layered));
        return ExitCode::SUCCESS;
    }
    if let Err(message) = init_logs(&flags) {
        eprintln!("agentkeeper: {message}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let cluster = match flags.cluster.resolve(&flags) {
        Ok(cluster) => cluster,
        Err(message) => {
            eprintln!("agentkeeper: {message}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let notifier = Arc::new(Notifier::from_env());
    raise_open_files_limit(flags.limits.connections_max);
    let uring = match use_uring(flags.io, flags.tls_cert.is_some()) {
        Ok(uring) => uring,
        Err(message) => return failed(&notifier, &message),
    };
    // With io_uring the gRPC threads are rings of their own; this runtime then only serves HTTP.
    let workers = if uring { 1 } else { usize::from(flags.net_threads) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("agentkeeper-net")
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => return failed(&notifier, &format!("cannot start the network runtime: {error}")),
    };
    match runtime.block_on(run(flags, cluster, uring, Arc::clone(&notifier))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => failed(&notifier, &message),
    }
}

/// Says why the daemon stops, on stderr and to the service manager (`systemctl status` shows it).
fn failed(notifier: &Notifier, message: &str) -> ExitCode {
    eprintln!("agentkeeper: {message}");
    notifier.status(&format!("failed: {message}"));
    ExitCode::FAILURE
}

/// Raises the soft limit on open files to the hard one: every connection is a descriptor, and
/// the usual soft limit (1024) is far below `--connections-max`. Warns when even the hard limit
/// is below it (connections past the descriptors then fail at accept, which backs off).
fn raise_open_files_limit(connections_max: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // Room for the listeners, the log, the data dir and the rings besides the connections.
    let needed = connections_max as u64 + 64;
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            connections_max,
            "the open-files limit is below --connections-max; raise it (ulimit -n) or lower the flag"
        );
    }
}

/// Binds the HTTP port by the contract's rule: a port given explicitly must be had; the default
/// one may be taken (two embedded daemons side by side), and then we warn and go on without it.
async fn bind_http(explicit: Option<SocketAddr>) -> Result<Option<TcpListener>, String> {
    let addr = explicit.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090)));
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(error) if explicit.is_some() => Err(format!("cannot listen on {addr} for HTTP (--metrics-addr): {error}")),
        Err(error) => {
            tracing::warn!(%addr, %error, "HTTP port unavailable; serving gRPC without dashboard and metrics");
            Ok(None)
        }
    }
}

/// Resolves `--io`: true for io_uring. `auto` probes and falls back to epoll with one warning;
/// an explicit `uring` that the kernel refuses is an error. TLS is served on epoll only.
fn use_uring(io: IoKind, tls: bool) -> Result<bool, String> {
    if tls {
        return match io {
            IoKind::Uring => Err("--tls-cert needs the epoll transport (--io epoll or auto)".into()),
            IoKind::Auto | IoKind::Epoll => Ok(false),
        };
    }
    match io {
        IoKind::Epoll => Ok(false),
        IoKind::Uring => server::uring::probe()
            .map(|()| true)
            .map_err(|why| format!("--io uring: io_uring is not available here ({why})")),
        IoKind::Auto => match server::uring::probe() {
            Ok(()) => Ok(true),
            Err(why) => {
                tracing::warn!(%why, "io_uring is not available; serving gRPC on epoll");
                Ok(false)
            }
        },
    }
}

/// Where the sentence encoder Find ranks with is: `--search-model`'s (an error when it holds
/// none), else the first model in the default places, else none; `Err` when the flag names no
/// model. Logs nothing: `load_search_model` says which ranking Find uses, once the daemon serves.
enum SearchModel {
    Off,
    Missing(Vec<std::path::PathBuf>),
    At(std::path::PathBuf),
}

fn find_search_model(flag: Option<&std::path::Path>) -> Result<SearchModel, String> {
    if flag.is_some_and(|dir| dir == std::path::Path::new("off")) {
        return Ok(SearchModel::Off);
    }
    let places = embed::model_dir::default_places(std::env::current_exe().ok().as_deref());
    Ok(match embed::model_dir::find(flag, &places)? {
        Some(dir) => SearchModel::At(dir),
        None => SearchModel::Missing(places),
    })
}

/// Loads the model `find_search_model` found, and says once which ranking Find uses and why.
fn load_search_model(model: SearchModel) -> Result<Option<SentenceEncoder>, String> {
    let dir = match model {
        SearchModel::Off => {
            tracing::info!("--search-model off: Find ranks lexically (BM25F)");
            return Ok(None);
        }
        SearchModel::Missing(places) => {
            let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
            tracing::warn!(
                looked_in = %looked.join(", "),
                "no search model: Find ranks lexically (BM25F); `make models` or --search-model DIR adds the sentence encoder"
            );
            return Ok(None);
        }
        SearchModel::At(dir) => dir,
    };
    let encoder = SentenceEncoder::load(&dir).map_err(|error| format!("--search-model: {error}"))?;
    tracing::info!(dir = %dir.display(), dims = encoder.dims(), "search model loaded: Find ranks by BM25F fused with the sentence encoder");
    Ok(Some(encoder))
}

/// The external embedder `--embedder` names, if any (its key from the environment), said once.
fn external_embedder(flags: &Flags) -> Result<Option<embed::http::HttpEmbedder>, String> {
    let (Some(url), Some(model)) = (&flags.embedder, &flags.embedder_model) else {
        return Ok(None);
    };
    embed::http::HttpEmbedderConfig::check_model(model)?;
    let api_key = std::env::var(embed::http::API_KEY_ENV)
        .ok()
        .filter(|key| !key.is_empty());
    let config = embed::http::HttpEmbedderConfig {
        url: embed::http::endpoint(url)?,
        model: model.clone(),
        api_key,
        timeout: flags.embedder_timeout,
    };
    tracing::info!(
        url = %config.url,
        model = %config.model,
        api_key = if config.api_key.is_some() { "set" } else { "none" },
        "external embedder: Find ranks by BM25F fused with its vectors"
    );
    Ok(Some(embed::http::HttpEmbedder::new(config)))
}

async fn run(flags: Flags, cluster: Option<ClusterStart>, uring: bool, notifier: Arc<Notifier>) -> Result<(), String> {
    // First of all, so that a signal during start-up (a long recovery) is a graceful stop too.
    let signalled = shutdown_signal();
    if let Some(path) = &flags.ready_file {
        clear_ready_file(path)?;
    }
    let tls = match (&flags.tls_cert, &flags.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls::config(cert, key, flags.tls_client_ca.as_deref())?),
        _ => None,
    };
    let tokens = match &flags.auth_tokens {
        Some(path) => Some(Arc::new(server::auth::Tokens::load(path)?)),
        None => None,
    };
    let search_model = find_search_model(flags.search_model.as_deref())?;
    // Both ports first: a taken port is a one-line exit before any slow recovery (or anything
    // logged about the search model).
    let grpc_listener = match flags.uds_only {
        true => None,
        false => Some(
            TcpListener::bind(flags.addr)
                .await
                .map_err(|error| format!("cannot listen on {} for gRPC (--addr): {error}", flags.addr))?,
        ),
    };
    let uds_listener = match &flags.uds {
        Some(path) => Some(server::uds::bind(&server::uds::UdsConfig {
            path: path.clone(),
            mode: flags.uds_mode,
            owner: flags.uds_owner,
        })?),
        None => None,
    };
    let http_listener = bind_http(flags.metrics_addr).await?;
    let peer_listener = match &cluster {
        Some(cluster) => Some(TcpListener::bind(cluster.peer_addr).await.map_err(|error| {
            format!(
                "cannot listen on {} for peers (--peer-addr): {error}",
                cluster.peer_addr
            )
        })?),
        None => None,
    };
    let bound = BoundAddrs {
        peer: peer_listener.as_ref().and_then(|listener| listener.local_addr().ok()),
        grpc: match &grpc_listener {
            Some(listener) => Some(
                listener
                    .local_addr()
                    .map_err(|error| format!("cannot read the gRPC listener's address: {error}"))?,
            ),
            None => None,
        },
        uds: flags.uds.clone(),
        http: http_listener.as_ref().and_then(|listener| listener.local_addr().ok()),
    };
    bound.log();
    let encoder = load_search_model(search_model)?;

    let metrics = Arc::new(Metrics::new());
    let serving = server::health::Serving::new().await;
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // HTTP serves from the start (/healthz ok, /readyz 503 while a data dir is replayed) and
    // stops last, after gRPC has drained, so /readyz says "shutting down" meanwhile.
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    // The dashboard's way to the core, filled in once the core runs (after any recovery).
    let core_slot: Arc<OnceLock<driver::CoreHandle>> = Arc::default();
    // The cluster's status for the dashboard's panel, filled in with the routes.
    let cluster_slot: Arc<OnceLock<server::cluster_status::ClusterStatus>> = Arc::default();
    // The MCP tools' way to the gRPC API (in process), filled in with the routes.
    let mcp_slot: Arc<OnceLock<agentkeeper::mcp::GrpcChannel>> = Arc::default();
    let http = http_listener.map(|listener| {
        if let Some(addr) = bound.http {
            tracing::info!(%addr, "HTTP dashboard, /healthz, /readyz and /metrics listening");
        }
        tokio::spawn(server::http::serve_http(
            listener,
            Arc::clone(&metrics),
            serving.clone(),
            server::dashboard::Dashboard::new(
                Arc::clone(&core_slot),
                Arc::clone(&cluster_slot),
                Arc::clone(&metrics),
                flags.watch_buffer as usize,
            ),
            agentkeeper::mcp::http::service(Arc::clone(&mcp_slot), bound.http),
            tokens.clone(),
            stopped(http_stop_rx.clone()),
        ))
    });

    let core_config = |seed| {
        flags.limits.core_config(CoreConfig {
            seed,
            dead_retention_ms: flags.dead_retention.as_millis() as u64,
            event_ring_max: flags.events_retained as usize,
            task_retention_ms: flags.task_retention.as_millis() as u64,
            ..CoreConfig::default()
        })
    };
    // What every replica must apply the log with (the seed is the cluster's, and not in it).
    let machine_digest = core_config(0).replicated_digest();
    // Which cluster a node belongs to (its data dir's, the list's, or its members' when it
    // joins), and the members it starts with.
    let joined = match &cluster {
        Some(cluster) => {
            let dir = flags
                .data_dir
                .as_deref()
                .expect("resolve checked that a cluster node has a data dir");
            notifier.status("finding which cluster this node belongs to");
            Some(cluster_identity(dir, cluster, machine_digest).await?)
        }
        None => None,
    };
    let seed = match &joined {
        // Ids and hashing must be the same on every replica.
        Some(joined) => joined.identity.core_seed,
        None => seed(&flags),
    };
    let config = core_config(seed);
    let wall = Clock::real();
    let queue_max = flags.limits.core_queue_max;
    let mut peer_tls = None;
    let (core, core_thread, peers) = match cluster.zip(joined) {
        Some((cluster, joined)) => {
            let dir = flags
                .data_dir
                .clone()
                .expect("resolve checked that a cluster node has a data dir");
            notifier.status(&format!("reading the consensus log in {}", dir.display()));
            let election_seed = self::seed(&flags);
            let now = wall.now();
            let start = cluster.clone();
            let identity = joined.identity;
            let (node, log) =
                tokio::task::spawn_blocking(move || start_node(&dir, &start, joined, config, election_seed, now))
                    .await
                    .map_err(|error| format!("recovery stopped: {error}"))??;
            let client_tls = cluster.tls.as_ref().map(|(_, client)| client.clone());
            let book = Arc::new(server::peer::PeerBook::new(
                cluster.node_id,
                identity,
                machine_digest,
                client_tls,
            ));
            peer_tls = cluster.tls.map(|(server, _)| server);
            let outbox = server::peer::outbox(&book, node.members());
            let (core, lanes) = driver::channels(queue_max, Arc::clone(&metrics));
            let engine = driver::ClusterNode::new(node, log, outbox);
            let thread = driver::spawn_cluster(lanes, engine, wall, flags.core_spin, Arc::clone(&metrics))
                .map_err(|error| format!("cannot start the core thread: {error}"))?;
            (core, thread, Some(book))
        }
        None => {
            let (core, store) = match flags.data_dir.clone() {
                None => (Core::new(config, wall.now()), None),
                Some(dir) => {
                    notifier.status(&format!("recovering the state in {}", dir.display()));
                    // Off the runtime: replaying a long log must not stall the HTTP answers.
                    let (seed, now) = (flags.seed, wall.now());
                    let recovered = tokio::task::spawn_blocking(move || recover(&dir, config, seed, now))
                        .await
                        .map_err(|error| format!("recovery stopped: {error}"))??;
                    let (core, store, logged) = recovered;
                    (core, Some(driver::Durability::new(store, flags.snapshot_every, logged)))
                }
            };
            let clock = match flags.clock {
                ClockKind::Real => wall,
                // A manual clock starts where the state left off or at the wall time, whichever is later.
                ClockKind::Manual => Clock::manual(wall.now().max(core.now())),
            };
            let mut machine = Machine::new(core, store.is_some());
            if store.is_some() {
                // Nobody is punished for the downtime; logged (and durable before any answer) so that a
                // crash right after replays it too.
                machine.handle(clock.now(), Input::Grace);
            }
            let (core, thread) = driver::spawn(machine, clock, store, queue_max, flags.core_spin, Arc::clone(&metrics))
                .map_err(|error| format!("cannot start the core thread: {error}"))?;
            (core, thread, None)
        }
    };
    let _ = core_slot.set(core.clone());
    let peer_server = match (peer_listener, &peers) {
        (Some(listener), Some(book)) => {
            if let Some(addr) = bound.peer {
                tracing::info!(%addr, node = book.node_id, tls = book.tls.is_some(), "cluster peers listening");
            }
            let serving = server::peer::serve_peers(
                listener,
                Arc::clone(book),
                core.clone(),
                peer_tls,
                stopped(http_stop_rx.clone()),
            );
            Some(tokio::spawn(async move {
                if let Err(error) = serving.await {
                    tracing::error!(%error, "the peer server stopped");
                }
            }))
        }
        _ => None,
    };

    let external = external_embedder(&flags)?;
    metrics
        .search_model_loaded
        .set(i64::from(encoder.is_some() || external.is_some()));
    let embedder = match embed::Sources::new(external, encoder, Arc::clone(&metrics)) {
        Some(sources) => Embedder::start(
            sources,
            flags.embed_threads as usize,
            core.clone(),
            Arc::clone(&metrics),
        ),
        None => Embedder::none(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let grpc = server::grpc(
        core.clone(),
        Arc::clone(&metrics),
        flags.watch_buffer as usize,
        flags.claim_wait_max,
        flags.limits.message_bytes_max,
        tokens,
        &serving,
        embedder,
    )
    .with_cluster(core.clone(), peers.is_some());
    let _ = cluster_slot.set(server::cluster_status::ClusterStatus {
        core: core.clone(),
        clustered: peers.is_some(),
    });
    let _ = mcp_slot.set(agentkeeper::mcp::in_process(grpc.clone()));
    let gate = server::connections::Gate::new(flags.limits.connections_max, Arc::clone(&metrics));
    let streams_max = flags.limits.streams_per_connection_max;
    // SERVING (and /readyz 200) before the first call can be answered: a client that got an
    // answer never sees NOT_SERVING afterwards, until shutdown.
    serving.serving().await;
    let uds_path = bound
        .uds
        .as_deref()
        .unwrap_or(std::path::Path::new(""))
        .display()
        .to_string();
    let (uds, grpc) = if uring {
        // Both listeners hand their connections to the same io_uring net threads.
        let threads = usize::from(flags.net_threads);
        let (handoff, mut finished) = server::uring::spawn(threads, grpc, streams_max, stop_rx.clone())
            .map_err(|error| format!("cannot start the io_uring threads: {error}"))?;
        let uds = uds_listener.map(|listener| {
            tracing::info!(path = %uds_path, io = "io_uring", "gRPC listening on the Unix socket");
            let listener = server::uring::Listener::Unix(listener);
            tokio::spawn(server::uring::accept(
                listener,
                handoff.clone(),
                gate.clone(),
                stop_rx.clone(),
            ))
        });
        if let Some(grpc_listener) = grpc_listener {
            tracing::info!(addr = %flags.addr, io = "io_uring", threads, "gRPC listening");
            let listener = server::uring::Listener::Tcp(grpc_listener);
            tokio::spawn(server::uring::accept(listener, handoff, gate, stop_rx.clone()));
        }
        // Not a join: a thread still draining after the grace must not hold up the exit.
        (
            uds,
            Some(tokio::spawn(async move { while finished.recv().await.is_some() {} })),
        )
    } else {
        let uds = uds_listener.map(|listener| {
            tracing::info!(path = %uds_path, io = "epoll", "gRPC listening on the Unix socket");
            let serving = server::uds::serve(
                listener,
                grpc.clone(),
                gate.clone(),
                streams_max,
                stopped(stop_rx.clone()),
            );
            tokio::spawn(async move {
                if let Err(error) = serving.await {
                    tracing::error!(%error, "the Unix socket's gRPC server stopped");
                }
            })
        });
        let grpc = grpc_listener.map(|grpc_listener| {
            let tls_on = tls.is_some();
            tracing::info!(addr = %flags.addr, io = "epoll", tls = tls_on, "gRPC listening");
            let serving = server::serve_grpc(grpc_listener, grpc, gate, streams_max, tls, stopped(stop_rx.clone()));
            tokio::spawn(async move {
                let _ = serving.await;
            })
        });
        (uds, grpc)
    };

    // A ready file that cannot be written stops the daemon: whoever waits for it would wait forever.
    let ready = match &flags.ready_file {
        Some(path) => write_ready_file(path, &bound.ready_json(std::process::id())),
        None => Ok(()),
    };
    if ready.is_ok() {
        // /readyz answers 200 from here on; so the service manager hears it now too.
        let status = bound.serving_status();
        let watchdog_timeout = notify::watchdog_timeout().filter(|_| notifier.enabled());
        if let Some(timeout) = watchdog_timeout {
            tracing::info!(timeout_ms = timeout.as_millis() as u64, "systemd watchdog enabled");
        }
        notifier.ready(&status);
        if let Some(timeout) = watchdog_timeout {
            let progress = core.progress().clone();
            tokio::spawn(watchdog::run(Arc::clone(&notifier), progress, timeout, status));
        }
        signalled.await;
    }
    notifier.stopping("shutting down: no new calls, finishing calls in flight");
    tracing::info!("shutting down: no new calls, finishing calls in flight, ending watch streams");
    serving.shutting_down().await;
    // Not ready any more, like /readyz from here on. Best effort: the exit goes on regardless.
    if let Some(path) = flags.ready_file.as_ref().filter(|_| ready.is_ok()) {
        let _ = std::fs::remove_file(path);
    }
    let _ = stop_tx.send(true);
    let _ = core.send(Request::EndStreams);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        if let Some(grpc) = grpc {
            let _ = grpc.await;
        }
        if let Some(uds) = uds {
            let _ = uds.await;
        }
        let _ = http_stop_tx.send(true);
        if let Some(http) = http {
            let _ = http.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("calls still in flight after {SHUTDOWN_GRACE:?}; closing them");
    }
    if let Some(path) = &flags.uds {
        // Nothing listens on it any more: leave no stale socket file behind.
        let _ = std::fs::remove_file(path);
    }
    // Consensus traffic went on while the calls drained (their writes needed it); the peers'
    // streams never end by themselves, so they are cut here.
    if let Some(peer_server) = peer_server {
        peer_server.abort();
    }
    core.stop();
    let _ = tokio::task::spawn_blocking(move || core_thread.join()).await;
    tracing::info!("stopped");
    ready
}

/// The addresses the daemon listens on as bound: with port 0 the OS picks the port, and only
/// these say which (for the log line, and the ready file a supervisor or test reads).
struct BoundAddrs {
    /// None with --uds-only.
    grpc: Option<SocketAddr>,
    /// The --uds socket's path.
    uds: Option<std::path::PathBuf>,
    http: Option<SocketAddr>,
    /// A cluster node's peer address.
    peer: Option<SocketAddr>,
}

impl BoundAddrs {
    /// One line in a stable form scripts may parse: `ports bound grpc=ADDR http=ADDR`, with
    /// `http=none` when the daemon serves no HTTP (the JSON log has the same two fields).
    fn log(&self) {
        let http = self.http.map_or_else(|| "none".to_string(), |addr| addr.to_string());
        let grpc = self.grpc.map_or_else(|| "none".to_string(), |addr| addr.to_string());
        match (self.peer, &self.uds) {
            (Some(peer), _) => tracing::info!(grpc = %grpc, http = %http, peer = %peer, "ports bound"),
            (None, Some(uds)) => tracing::info!(grpc = %grpc, http = %http, uds = %uds.display(), "ports bound"),
            (None, None) => tracing::info!(grpc = %grpc, http = %http, "ports bound"),
        }
    }

    /// Where gRPC is served: the TCP address, the socket's path, or both.
    fn grpc_places(&self) -> String {
        match (self.grpc, &self.uds) {
            (Some(addr), Some(uds)) => format!("{addr} and unix:{}", uds.display()),
            (Some(addr), None) => addr.to_string(),
            (None, Some(uds)) => format!("unix:{}", uds.display()),
            (None, None) => "nothing".to_string(),
        }
    }

    /// The service manager's status line while the daemon serves.
    fn serving_status(&self) -> String {
        match self.http {
            Some(http) => format!("serving gRPC on {} and HTTP on {http}", self.grpc_places()),
            None => format!("serving gRPC on {} (no HTTP)", self.grpc_places()),
        }
    }

    /// The ready file's contents: `{"grpc":"ADDR"|null,"http":"ADDR"|null,"pid":N}`, a cluster
    /// node's `"peer":"ADDR"`, and with --uds `"uds":"PATH"` (`grpc` null with --uds-only).
    fn ready_json(&self, pid: u32) -> String {
        let mut value = serde_json::json!({
            "grpc": self.grpc.map(|addr| addr.to_string()),
            "http": self.http.map(|addr| addr.to_string()),
            "pid": pid,
        });
        if let Some(peer) = self.peer {
            value["peer"] = serde_json::Value::String(peer.to_string());
        }
        if let Some(uds) = &self.uds {
            value["uds"] = serde_json::Value::String(uds.display().to_string());
        }
        format!("{value}\n")
    }
}

/// The temp file a ready file is written to before it is renamed into place.
fn ready_temp_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    std::path::PathBuf::from(name)
}

/// Before anything else: removes a ready file an earlier run left behind (after a kill -9), so
/// that whoever waits for the file sees this run's only, and proves its directory writable now
/// rather than after a long recovery. A bad path is a one-line exit.
fn clear_ready_file(path: &std::path::Path) -> Result<(), String> {
    let failed = |error: std::io::Error| format!("--ready-file {}: {error}", path.display());
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error)),
    }
    let temp = ready_temp_path(path);
    std::fs::write(&temp, b"").map_err(failed)?;
    std::fs::remove_file(&temp).map_err(failed)
}

/// Writes the ready file atomically: a temp file beside it, then a rename, so a reader sees no
/// file or the whole file, never a part.
fn write_ready_file(path: &std::path::Path, contents: &str) -> Result<(), String> {
    let temp = ready_temp_path(path);
    std::fs::write(&temp, contents)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|error| {
            let _ = std::fs::remove_file(&temp);
            format!("cannot write --ready-file {}: {error}", path.display())
        })
}

/// Opens the data dir and replays its log into a core (the restart grace comes next, through
/// the machine, which logs it). Also returns how many records the log holds since the last
/// snapshot (those replayed), where the snapshot count starts.
#[allow(clippy::disallowed_methods)] // times the recovery for the log line
fn recover(
    dir: &std::path::Path,
    config: CoreConfig,
    explicit_seed: Option<u64>,
    now: u64,
) -> Result<(Core, Store, u64), String> {
    let started = std::time::Instant::now();
    let (store, recovered) = Store::open(dir, config.seed, now).map_err(|e| e.to_string())?;
    if let Some(torn) = &recovered.torn {
        tracing::warn!(log = %store.log_path().display(), %torn, "cut a torn last record left by a crash");
    }
    if explicit_seed.is_some_and(|seed| seed != recovered.header.seed) && !recovered.records.is_empty() {
        tracing::warn!(
            seed = recovered.header.seed,
            "the data dir keeps the seed it was created with"
        );
    }
    let replayed = recovered.replayed();
    let from_snapshot = recovered.snapshot.is_some();
    let core = agentkeeper::store::replay(recovered, config);
    let stats = core.stats();
    tracing::info!(
        dir = %dir.display(),
        from_snapshot,
        replayed,
        agents = stats.agents_alive + stats.agents_unreachable,
        leases = stats.leases,
        policies = stats.policies,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered state from the data dir"
    );
    Ok((core, store, replayed))
}

/// Opens a cluster node's data dir (locking it) and starts the node from its consensus log:
/// the core is rebuilt by applying the committed entries again.
#[allow(clippy::disallowed_methods)] // times the start for the log line
fn start_node(
    dir: &std::path::Path,
    cluster: &ClusterStart,
    joined: Joined,
    core: CoreConfig,
    election_seed: u64,
    now: u64,
) -> Result<
    (
        agentkeeper::cluster::Node,
        agentkeeper::store::consensus_log::ConsensusLog,
    ),
    String,
> {
    use agentkeeper::cluster::{Node, NodeConfig};
    let started = std::time::Instant::now();
    use agentkeeper::store::consensus_log::ConsensusLog;
    // A node that joined has no configuration of its own: it starts from a leader's snapshot.
    let voters = if joined.identity.founding {
        cluster.members.voters()
    } else {
        Vec::new()
    };
    let (mut log, store) = ConsensusLog::open(dir, cluster.node_id, &voters).map_err(|e| e.to_string())?;
    if !joined.kept {
        log.keep_identity(&joined.identity).map_err(|e| e.to_string())?;
    }
    let epoch = log.next_epoch().map_err(|e| e.to_string())?;
    let held = store.last_index_held();
    // Every replica's core starts at time 0 and moves only with the leader's stamps.
    let mut config = NodeConfig::new(cluster.node_id, voters, core, 0);
    config.members = joined.addresses;
    config.epoch = epoch;
    config.seed = election_seed;
    config.tick_ms = CLUSTER_TICK_MS;
    config.heartbeat_ticks = cluster.heartbeat_ticks;
    config.election_ticks = cluster.election_ticks;
    // Two election timeouts: about what a failover takes.
    config.failover_grace_ms = 2 * cluster.election_ticks as u64 * CLUSTER_TICK_MS;
    config.snapshot_every = cluster.snapshot_every;
    // A follower lagging by less than this catches up from entries, not the whole state.
    config.snapshot_keep = (cluster.snapshot_every / 2).min(10_000);
    let node = Node::new(config, store, now)?;
    let status = node.status();
    tracing::info!(
        dir = %dir.display(),
        node = cluster.node_id,
        epoch,
        term = status.term,
        entries = held,
        applied = status.applied,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "started the cluster node from its consensus log"
    );
    Ok((node, log))
}

/// Which cluster the node belongs to, and the members' addresses it starts with (its
/// snapshot's, once it has one, count over these): what its data dir keeps; else, for a new
/// cluster (or a data dir from before identities were kept), what --initial-cluster creates;
/// else (`--initial-cluster-state existing`) what a member tells it.
async fn cluster_identity(
    dir: &std::path::Path,
    cluster: &ClusterStart,
    machine_digest: u32,
) -> Result<Joined, String> {
    use agentkeeper::store::consensus_log;
    let listed = |identity, kept| Joined {
        identity,
        addresses: cluster.members.members.clone(),
        kept,
    };
    if let Some(identity) = consensus_log::read_identity(dir).map_err(|e| e.to_string())? {
        return Ok(listed(identity, true));
    }
    if cluster.state == ClusterState::New || consensus_log::has_log(dir) {
        return Ok(listed(cluster.members.identity(), false));
    }
    join_identity(cluster, machine_digest).await
}

/// Which cluster a node belongs to and the members' addresses it starts with, as found at
/// start-up (`cluster_identity`).
struct Joined {
    identity: agentkeeper::cluster::ClusterIdentity,
    addresses: agentkeeper::cluster::Addresses,
    /// The data dir keeps the identity already (else the node keeps it once the dir is locked).
    kept: bool,
}

/// Asks the members --initial-cluster lists, in turn, which cluster this node joins, until one
/// answers (for at most a minute): the node must be a learner there already, at its address,
/// and run with the cluster's replicated settings.
#[allow(clippy::disallowed_methods)] // the deadline of the start-up's wait
async fn join_identity(cluster: &ClusterStart, machine_digest: u32) -> Result<Joined, String> {
    let me = cluster.node_id;
    let my_addr = &cluster.members.members[&me];
    let others: Vec<&String> = (cluster.members.members.iter())
        .filter(|(id, _)| **id != me)
        .map(|(_, addr)| addr)
        .collect();
    if others.is_empty() {
        return Err(
            "--initial-cluster-state existing: --initial-cluster must list the running members besides this node"
                .into(),
        );
    }
    let tls = cluster.tls.as_ref().map(|(_, client)| client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last_error = String::new();
    loop {
        for addr in &others {
            let answer = match server::peer::describe(addr, tls.as_ref(), me).await {
                Ok(answer) => answer,
                Err(error) => {
                    last_error = format!("{addr}: {error}");
                    continue;
                }
            };
            let add_first = format!("add it first: agentkeeper ctl cluster add {me} {my_addr}");
            let Some(listed) = answer.members.iter().find(|member| member.id == me) else {
                return Err(format!(
                    "node {me} is not a member of the cluster at {addr}: {add_first}"
                ));
            };
            if &listed.peer_addr != my_addr {
                return Err(format!(
                    "the cluster knows node {me} at {}, not {my_addr}: remove it and {add_first}",
                    listed.peer_addr
                ));
            }
            if listed.voter {
                return Err(format!(
                    "node {me} is a voter of the cluster at {addr} but its data dir is empty: a member that \
                     lost its data must be removed (agentkeeper ctl cluster remove {me}) and added again"
                ));
            }
            if answer.machine_digest != 0 && answer.machine_digest != machine_digest {
                return Err(server::peer::settings_differ(
                    &format!("this node ({me})"),
                    machine_digest,
                    &format!("the cluster at {addr}"),
                    answer.machine_digest,
                ));
            }
            let identity = agentkeeper::cluster::ClusterIdentity {
                cluster_id: answer.cluster_id,
                core_seed: answer.core_seed,
                founding: false,
            };
            let addresses = (answer.members.into_iter())
                .map(|member| (member.id, member.peer_addr))
                .collect();
            tracing::info!(cluster = format!("{:016x}", identity.cluster_id), from = %addr, "joining the cluster");
            return Ok(Joined {
                identity,
                addresses,
                kept: false,
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "--initial-cluster-state existing: no member answered within a minute ({last_error})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Installs the SIGTERM and SIGINT handlers now (a signal from here on is never the default
/// kill) and returns the future that resolves at the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
}
