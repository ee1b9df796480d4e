//! The MCP tools: each one's arguments (their JSON schema, with a description of every field),
//! its description for a model to read, the gRPC call it makes and the JSON it answers with.
//! A failed call is an MCP tool error whose text is the gRPC status's words
//! ("NOT_FOUND: agent ... is not known").
//!
//! Architecture invariant: one tool, one gRPC call (current_leader reads the first message of
//! WatchElection, the group's state); the answer is the API's answer reshaped, never computed.

use rmcp::ErrorData;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Extensions};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::Status;

use super::{GrpcChannel, Tools};
use crate::ctl::json::{agent_json, election_json, task_json, time_json};
use crate::ctl::status_words;
use crate::proto as pb;
use pb::election_service_client::ElectionServiceClient;
use pb::entitlements_service_client::EntitlementsServiceClient;
use pb::lease_service_client::LeaseServiceClient;
use pb::registry_service_client::RegistryServiceClient;
use pb::task_service_client::TaskServiceClient;

/// Agents find_agents returns when the model names no limit.
const FIND_LIMIT_DEFAULT: u32 = 10;
/// The longest claim_task waits for a task to appear.
pub const CLAIM_WAIT_SECONDS_MAX: u32 = 30;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FindAgents {
    /// What you need, in plain words (e.g. "translate invoices to German"); agents are ranked by
    /// how well their name, description, capabilities and skills match. Empty: no ranking.
    #[serde(default)]
    pub query: String,
    /// Tool names every returned agent must have (exact names, e.g. "web_search"). Empty: any.
    #[serde(default)]
    pub tools: Vec<String>,
    /// At most this many agents (default 10, at most 1000).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AgentId {
    /// The agent's id: 32 lowercase hex characters, as find_agents returns it.
    pub agent_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AcquireLease {
    /// The resource to lock: any string both sides agree on (e.g. "repo:main" or a file path).
    pub key: String,
    /// The id of the registered agent that will hold the lease (yours).
    pub holder: String,
    /// How long the lease lasts unless renewed, in seconds (1 to 86400).
    pub ttl_seconds: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RenewLease {
    /// The leased key.
    pub key: String,
    /// The id of the agent holding the lease.
    pub holder: String,
    /// The fencing token acquire_lease returned.
    pub token: u64,
    /// The new time to live from now, in seconds (1 to 86400).
    pub ttl_seconds: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReleaseLease {
    /// The leased key.
    pub key: String,
    /// The id of the agent holding the lease.
    pub holder: String,
    /// The fencing token acquire_lease returned.
    pub token: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CheckPolicy {
    /// Who wants to act, e.g. "agent:billing-bot".
    pub subject: String,
    /// What it wants to do, e.g. "call" or "write".
    pub action: String,
    /// What it wants to act on, e.g. "tool:send_email".
    pub resource: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateTask {
    /// The kind of work, e.g. "summarize"; workers read it to know what to do.
    #[serde(rename = "type")]
    pub kind: String,
    /// The task's input as text (e.g. JSON or a prompt).
    #[serde(default)]
    pub input: String,
    /// Tool names an agent must have to claim this task. Empty: any agent may.
    #[serde(default)]
    pub required_tools: Vec<String>,
    /// How many times the task may fail and be retried before it is DEAD (default 0).
    #[serde(default)]
    pub max_retries: u32,
    /// How long a claimer has to finish before the task goes back in line, in seconds
    /// (default 60, at most 86400).
    pub ttl_seconds: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClaimTask {
    /// The id of the registered agent that will do the work (yours).
    pub agent_id: String,
    /// How long to wait for a task when none is pending, in seconds (0 to 30; default 0:
    /// answer at once).
    #[serde(default)]
    pub wait_seconds: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CompleteTask {
    /// The claimed task's id.
    pub task_id: String,
    /// The id of the agent that claimed it.
    pub agent_id: String,
    /// The result as text.
    #[serde(default)]
    pub output: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FailTask {
    /// The claimed task's id.
    pub task_id: String,
    /// The id of the agent that claimed it.
    pub agent_id: String,
    /// Why it failed, in a sentence.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TaskId {
    /// The task's id, as create_task or claim_task returned it.
    pub task_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Group {
    /// The election group's name, e.g. "scheduler".
    pub group: String,
}

/// A lease as the tools show it: the key, its holder, the fencing token and the expiry.
fn lease_answer(lease: &pb::Lease) -> Value {
    json!({
        "key": lease.task_id,
        "holder_agent_id": lease.holder_agent_id,
        "token": lease.token.as_ref().map_or(0, |t| t.value),
        "acquired_at": time_json(lease.acquired_at.as_ref()),
        "expires_at": time_json(lease.expires_at.as_ref()),
    })
}

/// The tool's answer: the JSON on success, else a tool error with the status's words.
fn answer<R>(outcome: Result<R, Status>, shape: impl FnOnce(R) -> Value) -> Result<CallToolResult, ErrorData> {
    Ok(match outcome {
        Ok(reply) => CallToolResult::structured(shape(reply)),
        Err(status) => CallToolResult::error(vec![ContentBlock::text(status_words(&status))]),
    })
}

impl Tools {
    fn connection(&self) -> Result<GrpcChannel, Status> {
        self.channel
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the daemon is starting; try again in a moment"))
    }

    /// One call of the API over the channel, its answer's message.
    async fn call<R, F, Fut>(&self, call: F) -> Result<R, Status>
    where
        F: FnOnce(GrpcChannel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let channel = self.connection()?;
        call(channel).await.map(tonic::Response::into_inner)
    }

    /// The gRPC request for `message`, carrying the MCP request's bearer token (over HTTP) so
    /// that the API admits it by the token's role, as it would the same token over gRPC.
    fn request<M>(message: M, extensions: &Extensions) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        let bearer = extensions
            .get::<::http::request::Parts>()
            .and_then(|parts| parts.headers.get(::http::header::AUTHORIZATION))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        if let Some(bearer) = bearer {
            request.metadata_mut().insert("authorization", bearer);
        }
        request
    }
}

#[tool_router(vis = "pub(super)")]
impl Tools {
    #[tool(
        name = "find_agents",
        description = "Find live (ALIVE) agents of the fleet by what they can do. Use it to pick a \
        peer to delegate to or to ask. `query` ranks agents by how well their name, description, \
        capabilities and A2A skills match your words (best first; agents that match nothing come \
        last); `tools` keeps only agents that have every named tool. Answers {\"agents\": [...]}, \
        each with agent_id, name, description, version, tools, capabilities, metadata, status and \
        last_heartbeat_at. An empty list means no live agent fits."
    )]
    async fn find_agents(
        &self,
        Parameters(args): Parameters<FindAgents>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let message = pb::FindRequest {
            query: args.query,
            tools: args.tools,
            limit: args.limit.unwrap_or(FIND_LIMIT_DEFAULT),
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { RegistryServiceClient::new(channel).find(request).await })
            .await;
        answer(
            outcome,
            |reply| json!({ "agents": reply.agents.iter().map(agent_json).collect::<Vec<_>>() }),
        )
    }

    #[tool(
        name = "get_agent",
        description = "Show one agent by id, whatever its status: ALIVE (heartbeating), \
        UNREACHABLE (missed its heartbeats; may come back) or DEAD (gone; its leases were \
        released). Use it to check that a peer is still there before relying on it. NOT_FOUND: \
        no such agent (or it died long enough ago to be forgotten)."
    )]
    async fn get_agent(
        &self,
        Parameters(args): Parameters<AgentId>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let message = pb::GetAgentRequest {
            agent_id: args.agent_id,
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { RegistryServiceClient::new(channel).get_agent(request).await })
            .await;
        answer(outcome, |reply| agent_json(&reply.agent.unwrap_or_default()))
    }

    #[tool(
        name = "acquire_lease",
        description = "Take an exclusive, expiring lock (a lease) on a key for an agent, before \
        touching a resource others may touch too. Answers acquired (true: you hold it now; false: \
        another agent holds it, shown as holder_agent_id until expires_at), the fencing token \
        (a number that only grows: pass it with every write so a store can refuse a writer whose \
        lease has expired) and expires_at. Acquiring a key you already hold extends it and keeps \
        the token. Renew before expires_at if you need longer; release when done. The lease ends \
        by itself if the holder agent dies. NOT_FOUND or FAILED_PRECONDITION: the holder is not a \
        live registered agent."
    )]
    async fn acquire_lease(
        &self,
        Parameters(args): Parameters<AcquireLease>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let message = pb::AcquireLeaseRequest {
            task_id: args.key,
            agent_id: args.holder,
            ttl_seconds: args.ttl_seconds,
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { LeaseServiceClient::new(channel).acquire_lease(request).await })
            .await;
        answer(outcome, |reply| {
            let mut lease = lease_answer(&reply.lease.unwrap_or_default());
            lease["acquired"] = Value::Bool(reply.acquired);
            lease
        })
    }

    #[tool(
        name = "renew_lease",
        description = "Extend a lease you hold: its new expiry is ttl_seconds from now; the token \
        stays the same. FAILED_PRECONDITION: the lease expired or another holder has it now (stop \
        writing: your token is stale). Answers the lease: key, holder_agent_id, token, expires_at."
    )]
    async fn renew_lease(
        &self,
        Parameters(args): Parameters<RenewLease>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let message = pb::RenewLeaseRequest {
            task_id: args.key,
            agent_id: args.holder,
            token: Some(pb::FencingToken { value: args.token }),
            ttl_seconds: args.ttl_seconds,
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { LeaseServiceClient::new(channel).renew_lease(request).await })
            .await;
        answer(outcome, |reply| lease_answer(&reply.lease.unwrap_or_default()))
    }

    #[tool(
        name = "release_lease",
        description = "Give up a lease you hold, so others can take the key at once. Needs the \
        token acquire_lease returned. FAILED_PRECONDITION: you no longer hold it (it expired or \
        another holder has it). Answers {\"released\": true, \"key\": ...}."
    )]
    async fn release_lease(
        &self,
        Parameters(args): Parameters<ReleaseLease>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let key = args.key.clone();
        let message = pb::ReleaseLeaseRequest {
            task_id: args.key,
            agent_id: args.holder,
            token: Some(pb::FencingToken { value: args.token }),
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { LeaseServiceClient::new(channel).release_lease(request).await })
            .await;
        answer(outcome, |_| json!({ "released": true, "key": key }))
    }

    #[tool(
        name = "check_policy",
        description = "Ask whether a subject may do an action on a resource, by the fleet's \
        entitlement policies (glob rules; a matching DENY wins over ALLOW; nothing matching means \
        not allowed). Use it before an action that needs permission. Answers allowed (true or \
        false) and reason (which policy decided, or that none matched)."
    )]
    async fn check_policy(
        &self,
        Parameters(args): Parameters<CheckPolicy>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let message = pb::CheckPolicyRequest {
            subject: args.subject,
            action: args.action,
            resource: args.resource,
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { EntitlementsServiceClient::new(channel).check_policy(request).await })
            .await;
        answer(
            outcome,
            |reply| json!({ "allowed": reply.allowed, "reason": reply.reason }),
        )
    }

    #[tool(
        name = "create_task",
        description = "Put a piece of work on the fleet's task queue for some agent to claim. \
        Answers the task: its id (keep it to follow the task with get_task), status PENDING, and \
        the fields you gave. Agents claim tasks oldest first, only those whose required_tools \
        they all have."
    )]
    async fn create_task(
        &self,
        Parameters(args): Parameters<CreateTask>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let message = pb::CreateTaskRequest {
            r#type: args.kind,
            input: args.input.into_bytes(),
            required_tools: args.required_tools,
            max_retries: args.max_retries,
            ttl_seconds: args.ttl_seconds.unwrap_or(0),
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { TaskServiceClient::new(channel).create_task(request).await })
            .await;
        answer(outcome, |reply| task_json(&reply.task.unwrap_or_default()))
    }

    #[tool(
        name = "claim_task",
        description = "Take the oldest pending task this agent can do (it has every required \
        tool), waiting up to wait_seconds for one. Answers {\"task\": ..., \"lease\": ...}: the \
        task (id, type, input) and its claim lease (token, expires_at); both null when no task \
        came. Finish with complete_task or fail_task before the lease expires, or the task goes \
        back in line for another agent. FAILED_PRECONDITION: the agent is not ALIVE."
    )]
    async fn claim_task(
        &self,
        Parameters(args): Parameters<ClaimTask>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let wait_seconds = args.wait_seconds.min(CLAIM_WAIT_SECONDS_MAX);
        let message = pb::ClaimTaskRequest {
            agent_id: args.agent_id,
            wait_ms: Some(wait_seconds * 1000),
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { TaskServiceClient::new(channel).claim_task(request).await })
            .await;
        answer(outcome, |reply| {
            json!({
                "task": reply.task.as_ref().map(task_json),
                "lease": reply.lease.as_ref().map(lease_answer),
            })
        })
    }

    #[tool(
        name = "complete_task",
        description = "Mark a task you claimed as done, with its output. FAILED_PRECONDITION: you \
        no longer hold it (its claim lease expired and it went back in line, or it is finished). \
        Answers {\"completed\": true, \"task_id\": ...}."
    )]
    async fn complete_task(
        &self,
        Parameters(args): Parameters<CompleteTask>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let task_id = args.task_id.clone();
        let message = pb::CompleteTaskRequest {
            task_id: args.task_id,
            agent_id: args.agent_id,
            output: args.output.into_bytes(),
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { TaskServiceClient::new(channel).complete_task(request).await })
            .await;
        answer(outcome, |_| json!({ "completed": true, "task_id": task_id }))
    }

    #[tool(
        name = "fail_task",
        description = "Give back a task you claimed but could not do, saying why. It goes back in \
        line for a retry (or is DEAD once its max_retries are used up); get_task shows which. \
        FAILED_PRECONDITION: you no longer hold it. Answers {\"failed\": true, \"task_id\": ...}."
    )]
    async fn fail_task(
        &self,
        Parameters(args): Parameters<FailTask>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let task_id = args.task_id.clone();
        let message = pb::FailTaskRequest {
            task_id: args.task_id,
            agent_id: args.agent_id,
            reason: args.reason,
        };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { TaskServiceClient::new(channel).fail_task(request).await })
            .await;
        answer(outcome, |_| json!({ "failed": true, "task_id": task_id }))
    }

    #[tool(
        name = "get_task",
        description = "Show a task by id: status (PENDING, CLAIMED, COMPLETED, DEAD), who claimed \
        it, retry_count, failure_reason, input and output. Use it to follow work you created. \
        NOT_FOUND: no such task (finished tasks are forgotten after a while)."
    )]
    async fn get_task(
        &self,
        Parameters(args): Parameters<TaskId>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let message = pb::GetTaskRequest { task_id: args.task_id };
        let request = Self::request(message, &extensions);
        let outcome = self
            .call(|channel| async move { TaskServiceClient::new(channel).get_task(request).await })
            .await;
        answer(outcome, |reply| task_json(&reply.task.unwrap_or_default()))
    }

    #[tool(
        name = "current_leader",
        description = "Ask which agent leads an election group now (e.g. the one scheduler among \
        several replicas). Answers group, leader_agent_id (empty when nobody leads), term (grows \
        with every change of leader) and elected_at. A group nobody ever joined has no leader \
        and term 0."
    )]
    async fn current_leader(
        &self,
        Parameters(args): Parameters<Group>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let message = pb::WatchElectionRequest { group: args.group };
        let request = Self::request(message, &extensions);
        let outcome = match self.connection() {
            Ok(channel) => first_state(channel, request).await,
            Err(status) => Err(status),
        };
        answer(outcome, |state| election_json(&state))
    }
}

/// A group's state: the first message of WatchElection (a snapshot with sequence 0); the stream
/// is dropped after it, which ends the subscription.
async fn first_state(
    channel: GrpcChannel,
    request: tonic::Request<pb::WatchElectionRequest>,
) -> Result<pb::ElectionState, Status> {
    let mut stream = ElectionServiceClient::new(channel)
        .watch_election(request)
        .await?
        .into_inner();
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::unavailable("the election stream ended before the group's state"))?;
    crate::ctl::json::decode_payload::<pb::ElectionState>(&first)
        .ok_or_else(|| Status::internal("the election stream's first message is not the group's state"))
}
