//! `agentkeeper ctl`: a command-line client for a running daemon, in the manner of etcdctl.
//! Each command is one or a few gRPC calls of the public API; the output is an aligned table or,
//! with `--json`, one JSON value (`watch --json`: one JSON object per line).
//!
//! Architecture invariant: ctl speaks only the public gRPC API, exactly as any client would; it
//! adds nothing to the wire. What the API cannot list (leases, elections by name), ctl cannot.

pub mod json;
mod render;

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::proto as pb;
use render::Output;

/// Inspect and change a running daemon from the command line.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The daemon's gRPC address, HOST:PORT (or an http:// URL), or unix:PATH for its --uds socket.
    #[arg(long, global = true, default_value = "127.0.0.1:7070")]
    endpoint: String,

    /// Print JSON (one value; for watch, one object per line) instead of a table.
    #[arg(long, global = true)]
    json: bool,

    /// How long one call may take (e.g. 500ms, 10s). Watch streams are not limited.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// A bearer token for a daemon started with --auth-tokens (better: the AGENTKEEPER_TOKEN
    /// environment variable, which other users cannot read in the process list).
    #[arg(long, global = true, env = "AGENTKEEPER_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List ALIVE agents (Find: UNREACHABLE and DEAD agents are not listed; see `agent ID`).
    Agents {
        /// Only agents with this tool (repeat for several: all of them are required).
        #[arg(long = "tool", value_name = "TOOL")]
        tools: Vec<String>,
        /// At most this many agents (the daemon returns at most 1000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Show one agent, whatever its status (DEAD ones are kept for --dead-retention); `agent
    /// card ID` prints its A2A agent card (JSON: the one registered, else one built from its card).
    Agent {
        /// ID, or `card ID`.
        #[arg(num_args = 1..=2, value_names = ["ID"])]
        words: Vec<String>,
    },
    /// Find ALIVE agents by a natural-language query, best match first.
    Find {
        query: String,
        /// Only agents with this tool (repeat for several).
        #[arg(long = "tool", value_name = "TOOL")]
        tools: Vec<String>,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// List the leases held, by key (every page).
    Leases {
        /// Only leases whose key starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// List the election groups: leader, term and the candidates standing by.
    Elections,
    /// Show an election group's leader and term.
    Election { group: String },
    /// Entitlement policies: set, check, list, delete.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List tasks, oldest first (every page).
    Tasks {
        /// Only tasks in this status.
        #[arg(long, value_enum)]
        status: Option<TaskStatus>,
    },
    /// Show one task, with its input and output.
    Task { id: String },
    /// A cluster's members, its leader and their progress (a daemon started with --initial-cluster).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print events as they happen, one line each, until interrupted.
    Watch {
        /// Topic prefixes, e.g. `agent.` or `lease.expired` (none: every topic).
        topics: Vec<String>,
        /// Start with the retained events from this sequence number on.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// The leader, the term, and each member with its role and applied index, as the node at
    /// --endpoint sees them.
    Status,
    /// Add node ID, which will listen for peers at HOST:PORT, as a learner; the leader makes it
    /// a voter once it has caught up. Then start it with --initial-cluster-state existing.
    Add {
        id: u64,
        #[arg(value_name = "HOST:PORT")]
        peer_addr: String,
    },
    /// Remove node ID from the cluster (a leader removed steps down; the others elect another).
    Remove { id: u64 },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Create or replace a policy.
    Set {
        id: String,
        /// Subject glob, e.g. `agent:*`.
        #[arg(long)]
        subject: String,
        /// Action glob, e.g. `call`.
        #[arg(long)]
        action: String,
        /// Resource glob, e.g. `tool:write_*`.
        #[arg(long)]
        resource: String,
        #[arg(long, value_enum)]
        effect: Effect,
    },
    /// Ask whether a subject may do an action on a resource (exit 0 either way).
    Check {
        subject: String,
        action: String,
        resource: String,
    },
    /// List policies, by id.
    List {
        /// Only policies whose subject starts with this.
        #[arg(long, default_value = "")]
        subject_prefix: String,
    },
    /// Delete a policy.
    Delete { id: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TaskStatus {
    Pending,
    Claimed,
    Completed,
    Failed,
    Dead,
}

/// Items asked for per ListTasks or ListLeases page.
const LIST_PAGE: u32 = 500;

/// Runs one ctl command; the error is the one line to print on stderr.
pub fn run(args: CtlArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(execute(args))
}

async fn execute(args: CtlArgs) -> Result<(), String> {
    let channel = connect(&args.endpoint, args.timeout, args.token.as_deref()).await?;
    let out = Output::new(args.json);
    match args.command {
        Command::Agents { tools, limit } => {
            let agents = find(&channel, String::new(), tools, limit).await?;
            out.agents(&agents)
        }
        Command::Find { query, tools, limit } => {
            let agents = find(&channel, query, tools, limit).await?;
            out.agents(&agents)
        }
        Command::Agent { words } => {
            let (id, card) = match words.as_slice() {
                [id] => (id.clone(), false),
                [card, id] if card == "card" => (id.clone(), true),
                _ => return Err(format!("agent: expected ID or `card ID`, got {words:?}")),
            };
            let mut client = pb::registry_service_client::RegistryServiceClient::new(channel);
            let reply = client
                .get_agent(pb::GetAgentRequest { agent_id: id })
                .await
                .map_err(failed("GetAgent"))?;
            let agent = reply.into_inner().agent.unwrap_or_default();
            if card { out.a2a_card(&agent) } else { out.agent(&agent) }
        }
        Command::Election { group } => {
            let mut client = pb::election_service_client::ElectionServiceClient::new(channel);
            let mut stream = client
                .watch_election(pb::WatchElectionRequest { group })
                .await
                .map_err(failed("WatchElection"))?
                .into_inner();
            // The first message is the group's current state (sequence 0).
            let first = stream
                .message()
                .await
                .map_err(failed("WatchElection"))?
                .ok_or("WatchElection: the stream ended before the group's state")?;
            let state = json::decode_payload::<pb::ElectionState>(&first).unwrap_or_default();
            out.election(&state)
        }
        Command::Leases { prefix } => {
            let client = pb::lease_service_client::LeaseServiceClient::new(channel);
            let leases = every_page(|page_token| {
                let (mut client, prefix) = (client.clone(), prefix.clone());
                async move {
                    let request = pb::ListLeasesRequest {
                        prefix,
                        page_size: LIST_PAGE,
                        page_token,
                    };
                    let page = client.list_leases(request).await.map_err(failed("ListLeases"))?;
                    let page = page.into_inner();
                    Ok((page.leases, page.next_page_token))
                }
            })
            .await?;
            out.leases(&leases)
        }
        Command::Elections => {
            let client = pb::election_service_client::ElectionServiceClient::new(channel);
            let groups = every_page(|page_token| {
                let mut client = client.clone();
                async move {
                    let request = pb::ListElectionsRequest {
                        page_size: LIST_PAGE,
                        page_token,
                    };
                    let page = client.list_elections(request).await.map_err(failed("ListElections"))?;
                    let page = page.into_inner();
                    Ok((page.groups, page.next_page_token))
                }
            })
            .await?;
            out.elections(&groups)
        }
        Command::Policy(command) => policy(channel, command, &out).await,
        Command::Cluster(command) => cluster(channel, command, &out).await,
        Command::Tasks { status } => {
            let status = status.map_or(pb::TaskStatus::Unspecified, |s| match s {
                TaskStatus::Pending => pb::TaskStatus::Pending,
                TaskStatus::Claimed => pb::TaskStatus::Claimed,
                TaskStatus::Completed => pb::TaskStatus::Completed,
                TaskStatus::Failed => pb::TaskStatus::Failed,
                TaskStatus::Dead => pb::TaskStatus::Dead,
            });
            let client = pb::task_service_client::TaskServiceClient::new(channel);
            let tasks = every_page(|page_token| {
                let mut client = client.clone();
                async move {
                    let request = pb::ListTasksRequest {
                        status: status as i32,
                        page_size: LIST_PAGE,
                        page_token,
                    };
                    let page = client.list_tasks(request).await.map_err(failed("ListTasks"))?;
                    let page = page.into_inner();
                    Ok((page.tasks, page.next_page_token))
                }
            })
            .await?;
            out.tasks(&tasks)
        }
        Command::Task { id } => {
            let mut client = pb::task_service_client::TaskServiceClient::new(channel);
            let reply = client
                .get_task(pb::GetTaskRequest { task_id: id })
                .await
                .map_err(failed("GetTask"))?;
            out.task(&reply.into_inner().task.unwrap_or_default())
        }
        Command::Watch { topics, from } => watch(channel, topics, from, &out).await,
    }
}

/// Every item of a paged listing: `fetch` gets a page token ("" first) and returns a page and
/// the next token ("" after the last page).
async fn every_page<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, String>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), String>>,
{
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let (page, next) = fetch(page_token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        page_token = next;
    }
}

async fn find(channel: &Conn, query: String, tools: Vec<String>, limit: u32) -> Result<Vec<pb::AgentInfo>, String> {
    let mut client = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let reply = client
        .find(pb::FindRequest { query, tools, limit })
        .await
        .map_err(failed("Find"))?;
    Ok(reply.into_inner().agents)
}

async fn policy(channel: Conn, command: PolicyCommand, out: &Output) -> Result<(), String> {
    let mut client = pb::entitlements_service_client::EntitlementsServiceClient::new(channel);
    match command {
        PolicyCommand::Set {
            id,
            subject,
            action,
            resource,
            effect,
        } => {
            let effect = match effect {
                Effect::Allow => pb::PolicyEffect::Allow,
                Effect::Deny => pb::PolicyEffect::Deny,
            };
            let policy = pb::Policy {
                id,
                subject,
                action,
                resource,
                effect: effect as i32,
            };
            let reply = client
                .set_policy(pb::SetPolicyRequest { policy: Some(policy) })
                .await
                .map_err(failed("SetPolicy"))?;
            out.policies(&[reply.into_inner().policy.unwrap_or_default()])
        }
        PolicyCommand::Check {
            subject,
            action,
            resource,
        } => {
            let reply = client
                .check_policy(pb::CheckPolicyRequest {
                    subject,
                    action,
                    resource,
                })
                .await
                .map_err(failed("CheckPolicy"))?;
            out.decision(&reply.into_inner())
        }
        PolicyCommand::List { subject_prefix } => {
            let policies = every_page(|page_token| {
                let (mut client, subject_prefix) = (client.clone(), subject_prefix.clone());
                async move {
                    let request = pb::ListPoliciesRequest {
                        subject_prefix,
                        page_size: LIST_PAGE,
                        page_token,
                    };
                    let page = client.list_policies(request).await.map_err(failed("ListPolicies"))?;
                    let page = page.into_inner();
                    Ok((page.policies, page.next_page_token))
                }
            })
            .await?;
            out.policies(&policies)
        }
        PolicyCommand::Delete { id } => {
            client
                .delete_policy(pb::DeletePolicyRequest { id: id.clone() })
                .await
                .map_err(failed("DeletePolicy"))?;
            out.deleted(&id)
        }
    }
}

async fn watch(channel: Conn, topics: Vec<String>, from_sequence: u64, out: &Output) -> Result<(), String> {
    let mut client = pb::registry_service_client::RegistryServiceClient::new(channel);
    let mut stream = client
        .watch(pb::WatchRequest { topics, from_sequence })
        .await
        .map_err(failed("Watch"))?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match next.map_err(failed("Watch"))? {
            Some(event) => {
                let line = out.event_line(&event);
                // A closed pipe (`| head`) ends the watch quietly.
                if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                    return Ok(());
                }
            }
            None => return Ok(()),
        }
    }
}

/// The connection every command uses: the channel, with the bearer token (if any) on each call.
/// A channel to the daemon that carries the bearer token, if any.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer TOKEN` to every call when ctl was given a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub async fn connect(endpoint: &str, timeout: Duration, token: Option<&str>) -> Result<Conn, String> {
    let bearer = match token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| "--token: not a valid header value".to_string())?,
        ),
        None => None,
    };
    let channel = open_channel(endpoint, timeout).await?;
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}

async fn open_channel(endpoint: &str, timeout: Duration) -> Result<Channel, String> {
    if let Some(path) = endpoint.strip_prefix("unix:") {
        return open_unix_channel(endpoint, path, timeout).await;
    }
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{}", endpoint.replacen("localhost:", "127.0.0.1:", 1))
    };
    let endpoint_ = Endpoint::from_shared(url).map_err(|e| format!("--endpoint {endpoint:?}: {e}"))?;
    endpoint_
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {}", chain(&e)))
}

/// A channel over the daemon's Unix socket (`--endpoint unix:PATH`, the daemon's `--uds PATH`).
async fn open_unix_channel(endpoint: &str, path: &str, timeout: Duration) -> Result<Channel, String> {
    let settings = Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout);
    (crate::server::uds::connect(settings, std::path::Path::new(path)).await)
        .map_err(|e| format!("cannot connect to {endpoint}: {}", chain(&e)))
}

/// An error and its causes, "a: b: c".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Turns a failed call into its one line: "GetAgent: NOT_FOUND: agent ... is not known".
async fn cluster(channel: Conn, command: ClusterCommand, out: &Output) -> Result<(), String> {
    let client = pb::cluster_service_client::ClusterServiceClient::new(channel);
    match command {
        ClusterCommand::Status => {
            let mut client = client;
            let reply = client
                .status(pb::ClusterStatusRequest {})
                .await
                .map_err(failed("ClusterService.Status"))?;
            out.cluster(&reply.into_inner())
        }
        ClusterCommand::Add { id, peer_addr } => {
            let request = pb::AddMemberRequest {
                id,
                peer_addr: peer_addr.clone(),
            };
            let reply = retry_membership(|| {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.add_member(request).await }
            })
            .await
            .map_err(failed("ClusterService.AddMember"))?;
            let status = reply.into_inner().status.unwrap_or_default();
            let others: Vec<String> = (status.members.iter())
                .map(|m| format!("{}={}", m.id, m.peer_addr))
                .collect();
            let done = format!(
                "node {id} added as a learner at {peer_addr}; it becomes a voter once it has caught up. Start it with:\n  \
                 agentkeeper --node-id {id} --peer-addr {peer_addr} --initial-cluster {} --initial-cluster-state existing \
                 --data-dir DIR --addr HOST:PORT\n",
                others.join(",")
            );
            out.member_change(&done, &status)
        }
        ClusterCommand::Remove { id } => {
            let reply = retry_membership(|| {
                let mut client = client.clone();
                async move { client.remove_member(pb::RemoveMemberRequest { id }).await }
            })
            .await
            .map_err(failed("ClusterService.RemoveMember"))?;
            let status = reply.into_inner().status.unwrap_or_default();
            out.member_change(&format!("node {id} removed from the cluster\n"), &status)
        }
    }
}

/// Sends a membership change again while the cluster says to retry (one change at a time, an
/// election under way), for up to ten seconds; any other answer is final.
async fn retry_membership<T, F>(mut send: impl FnMut() -> F) -> Result<T, tonic::Status>
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut left = 20;
    loop {
        match send().await {
            Err(status)
                if left > 0 && status.code() == tonic::Code::Unavailable && status.message().contains("retry") =>
            {
                left -= 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

fn failed(method: &'static str) -> impl Fn(tonic::Status) -> String {
    move |status| format!("{method}: {}", status_words(&status))
}

/// A status as its code's name and message: "NOT_FOUND: agent ... is not known".
pub fn status_words(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut name = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    let message = status.message();
    if message.is_empty() {
        name
    } else {
        format!("{name}: {message}")
    }
}
