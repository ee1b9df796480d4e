//! The tonic services: each call becomes one `Command` for the core, each answer one message;
//! Watch and WatchElection are server streams fed from the driver.
//!
//! Architecture invariant: only `server/` knows about gRPC. Services hold no state of their own
//! beyond the handle on the driver; they never wait on anything but their own reply.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use super::auth::{Caller, Role};
use super::subscription::{self, Subscription, UnwatchGuard};
use super::{a2a, convert, keepalive, pages};
use crate::core::machine::StreamEnd;
use crate::core::types::TokenId;
use crate::core::{Command, Event, Reply};
use crate::driver::CoreHandle;
use crate::embed::Embedder;
use crate::embed::workers::CardLookup;
use crate::metrics::Metrics;
use crate::proto as pb;

/// The one implementation of every service, shared by all transports.
#[derive(Clone)]
pub struct Api {
    core: CoreHandle,
    metrics: Arc<Metrics>,
    /// Events a watch stream may have queued before it is cut off as too slow.
    watch_buffer: usize,
    /// The longest a ClaimTask call waits for a task.
    claim_wait_max: Duration,
    /// The sentence encoder's workers: card vectors after Register, query vectors for Find
    /// (none without a model).
    embedder: Embedder,
}

impl Api {
    pub fn new(core: CoreHandle, metrics: Arc<Metrics>, watch_buffer: usize, claim_wait_max: Duration) -> Self {
        assert!(watch_buffer > 0, "a watch buffer holds at least one event");
        Api {
            core,
            metrics,
            watch_buffer,
            claim_wait_max,
            embedder: Embedder::none(),
        }
    }

    /// Ranks Find with `embedder`'s vectors and gives registered cards theirs.
    pub fn with_embedder(self, embedder: Embedder) -> Self {
        Api { embedder, ..self }
    }

    /// The agent token that makes this call, if one does (only with `--auth-tokens`): the core
    /// binds the agents it registers to it and lets it act for those agents only.
    fn agent_token<T>(request: &Request<T>) -> Option<TokenId> {
        Self::agent_token_of(request.extensions())
    }

    fn agent_token_of(extensions: &http::Extensions) -> Option<TokenId> {
        extensions
            .get::<Caller>()
            .filter(|caller| caller.role == Role::Agent)
            .map(|caller| caller.token_id)
    }

    /// A keep-alive stream of kind `K`, its messages decoded by tonic (the `keep_alive` methods)
    /// or by the lean path (`lean_stream`), on behalf of the caller in `extensions`.
    pub fn keep_alive_stream<K: keepalive::Kind>(
        &self,
        extensions: &http::Extensions,
        inbound: impl keepalive::Inbound<K>,
    ) -> keepalive::AnswerStream<K::Response> {
        let principal = Self::agent_token_of(extensions);
        keepalive::serve::<K, _>(self.core.clone(), &self.metrics, principal, inbound)
    }

    async fn call(&self, method: &'static str, command: Command) -> Result<Reply, Status> {
        self.call_as(method, command, None).await
    }

    async fn call_as(
        &self,
        method: &'static str,
        command: Command,
        principal: Option<TokenId>,
    ) -> Result<Reply, Status> {
        let outcome = self.core.call_as(command, principal).await;
        self.count(method, &outcome);
        outcome.map_err(convert::status)
    }

    /// One page gathered from as many core commands as it takes (see `pages`), counted as one
    /// call.
    async fn gather<S: pages::Slices>(
        &self,
        method: &'static str,
        slices: &S,
        want: usize,
        page_token: String,
    ) -> Result<pages::Gathered<S::Item>, Status> {
        let outcome = pages::gather(&self.core, slices, want, page_token).await;
        self.count(method, &outcome);
        match outcome.map_err(convert::status)? {
            Ok(page) => Ok(page),
            Err(other) => Err(unexpected(&other)),
        }
    }

    fn count<T>(&self, method: &'static str, outcome: &Result<T, crate::core::CoreError>) {
        let code = outcome.as_ref().err().map(|e| format!("{:?}", e.code));
        self.metrics.count_rpc(method, code.as_deref());
    }

    /// Opens a stream: the driver attaches the sink before any event can be routed to it.
    async fn subscribe(&self, method: &'static str, command: Command) -> Result<(Reply, EventStream), Status> {
        let outcome = subscription::open(&self.core, self.watch_buffer, command).await;
        self.count(method, &outcome);
        let Subscription {
            reply,
            live,
            end,
            guard,
        } = outcome.map_err(convert::status)?;
        let stream = EventStream {
            first: None,
            replay: Vec::new().into_iter(),
            live,
            end,
            done: false,
            _unwatch: guard,
        };
        Ok((reply, stream))
    }
}

/// ListPolicies' slices: policies by id whose subject starts with the prefix.
struct PolicySlices {
    subject_prefix: String,
}

impl pages::Slices for PolicySlices {
    type Item = pb::Policy;

    fn command(&self, size: u32, page_token: String) -> Command {
        Command::ListPolicies {
            subject_prefix: self.subject_prefix.clone(),
            page_size: size,
            page_token,
        }
    }

    fn split(&self, reply: Reply) -> Result<(Vec<pb::Policy>, String), Reply> {
        match reply {
            Reply::Policies {
                policies,
                next_page_token,
            } => Ok((
                policies.iter().map(|p| convert::policy_to_pb(p)).collect(),
                next_page_token,
            )),
            other => Err(other),
        }
    }

    fn token_after(&self, policy: &pb::Policy) -> String {
        policy.id.clone()
    }
}

/// ListTasks' slices: tasks in creation order, one status or all.
struct TaskSlices {
    status: Option<crate::core::tasks::TaskStatus>,
}

impl pages::TaskSlicing for TaskSlices {
    fn command(&self, size: u32, page_token: String, bytes_left: Option<u64>) -> Command {
        Command::ListTasks {
            status: self.status,
            page_size: size,
            page_token,
            bytes_left,
        }
    }

    fn split(&self, reply: Reply) -> Result<(Vec<pb::Task>, usize, String), Reply> {
        match reply {
            Reply::Tasks { tasks, next_page_token } => {
                let bytes = tasks.iter().map(|t| t.input.len() + t.output.len()).sum();
                Ok((tasks.iter().map(convert::task_to_pb).collect(), bytes, next_page_token))
            }
            other => Err(other),
        }
    }
}

/// ListElections' slices: groups by name.
struct ElectionSlices;

impl pages::Slices for ElectionSlices {
    type Item = pb::ElectionGroup;

    fn command(&self, size: u32, page_token: String) -> Command {
        Command::ListElections {
            page_size: size,
            page_token,
        }
    }

    fn split(&self, reply: Reply) -> Result<(Vec<pb::ElectionGroup>, String), Reply> {
        match reply {
            Reply::Elections {
                groups,
                next_page_token,
            } => Ok((groups.iter().map(convert::group_to_pb).collect(), next_page_token)),
            other => Err(other),
        }
    }

    fn token_after(&self, group: &pb::ElectionGroup) -> String {
        group.state.as_ref().map(|s| s.group.clone()).unwrap_or_default()
    }
}

/// Response metadata a Watch or WatchElection carries once the daemon has subscribed the caller.
/// A refusal (OUT_OF_RANGE, say) comes as trailers only, with no such header, so a client tells
/// the two apart from the headers alone, without racing the status that follows them.
pub const SUBSCRIBED_HEADER: &str = "agentkeeper-subscribed";

/// A stream's response, marked as subscribed (`SUBSCRIBED_HEADER`).
fn subscribed(stream: EventStreamBox) -> Response<EventStreamBox> {
    let mut response = Response::new(stream);
    (response.metadata_mut()).insert(SUBSCRIBED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    response
}

fn unexpected(reply: &Reply) -> Status {
    Status::internal(format!("the core answered with an unexpected reply: {reply:?}"))
}

/// A watch stream: first a snapshot or the replay, then live events, then the daemon's last word.
pub struct EventStream {
    first: Option<pb::Event>,
    replay: std::vec::IntoIter<Arc<Event>>,
    live: mpsc::Receiver<Arc<Event>>,
    end: oneshot::Receiver<StreamEnd>,
    done: bool,
    _unwatch: UnwatchGuard,
}

impl Stream for EventStream {
    type Item = Result<pb::Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if let Some(event) = self.replay.next() {
            return Poll::Ready(Some(Ok(convert::event_to_pb(&event))));
        }
        match self.live.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(convert::event_to_pb(&event)))),
            Poll::Ready(None) => {
                // The driver sets the last word before it drops the buffer's sender.
                self.done = true;
                match self.end.try_recv() {
                    Ok(end) => Poll::Ready(Some(Err(convert::stream_end(end)))),
                    Err(_) => Poll::Ready(None),
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

type EventStreamBox = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for Api {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let principal = Self::agent_token(&request);
        let (metadata, _, request) = request.into_parts();
        let mut card = request.card.unwrap_or_default();
        // An A2A card is checked here, at the edge, and fills the plain card (skills as
        // capabilities); the core keeps its JSON verbatim.
        a2a::card::absorb(&mut card)?;
        let card = convert::card_from_pb(card);
        // A card whose text's vector is cached gets it in its Register; any other card's vector
        // follows Register's answer (an embedding worker computes it).
        let (vector, pending) = match self.embedder.before_register(&card) {
            Some(CardLookup::Cached(vector)) => (Some(vector), None),
            Some(CardLookup::Pending(pending)) => (None, Some(pending)),
            None => (None, None),
        };
        let command = Command::Register {
            card: Box::new(card),
            ttl_seconds: request.ttl_seconds,
            vector,
        };
        let command = super::numbered::numbered(&metadata, command)?;
        match self.call_as("Register", command, principal).await? {
            Reply::Registered { agent_id } => {
                let agent_id = agent_id.to_string();
                if let Some(pending) = pending {
                    self.embedder.card_registered(&agent_id, pending);
                }
                Ok(Response::new(pb::RegisterResponse { agent_id }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let principal = Self::agent_token(&request);
        let agent_id = request.into_inner().agent_id;
        self.call_as("Heartbeat", Command::Heartbeat { agent_id }, principal)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let principal = Self::agent_token(&request);
        let agent_id = request.into_inner().agent_id;
        self.call_as("Deregister", Command::Deregister { agent_id }, principal)
            .await?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::GetAgentResponse>, Status> {
        let agent_id = request.into_inner().agent_id;
        match self.call("GetAgent", Command::GetAgent { agent_id }).await? {
            Reply::Agent(agent) => Ok(Response::new(pb::GetAgentResponse {
                agent: Some(convert::agent_to_pb(&agent)),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn find(&self, request: Request<pb::FindRequest>) -> Result<Response<pb::FindResponse>, Status> {
        let request = request.into_inner();
        // The query's vector is computed before the command enters the core (lexical without it).
        let vector = self.embedder.query_vector(&request.query).await;
        let command = Command::Find {
            query: request.query,
            tools: request.tools,
            limit: request.limit,
            vector,
        };
        match self.call("Find", command).await? {
            Reply::Agents(agents) => Ok(Response::new(pb::FindResponse {
                agents: agents.iter().map(convert::agent_to_pb).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    type WatchStream = EventStreamBox;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let command = Command::Watch {
            topics: request.topics,
            from_sequence: request.from_sequence,
        };
        let (reply, mut stream) = self.subscribe("Watch", command).await?;
        if let Reply::Watching { replay, .. } = reply {
            stream.replay = replay.into_iter();
        }
        Ok(subscribed(Box::pin(stream)))
    }

    type KeepAliveStream = keepalive::AnswerStream<pb::KeepAliveResponse>;

    async fn keep_alive(
        &self,
        request: Request<tonic::Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let (_, extensions, inbound) = request.into_parts();
        Ok(Response::new(
            self.keep_alive_stream::<keepalive::Heartbeats>(&extensions, inbound),
        ))
    }
}

#[tonic::async_trait]
impl pb::lease_service_server::LeaseService for Api {
    type KeepAliveStream = keepalive::AnswerStream<pb::LeaseKeepAliveResponse>;

    async fn keep_alive(
        &self,
        request: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let (_, extensions, inbound) = request.into_parts();
        Ok(Response::new(
            self.keep_alive_stream::<keepalive::Renewals>(&extensions, inbound),
        ))
    }

    async fn acquire_lease(
        &self,
        request: Request<pb::AcquireLeaseRequest>,
    ) -> Result<Response<pb::AcquireLeaseResponse>, Status> {
        let principal = Self::agent_token(&request);
        let r = request.into_inner();
        let command = Command::AcquireLease {
            task_id: r.task_id,
            agent_id: r.agent_id,
            ttl_seconds: r.ttl_seconds,
        };
        match self.call_as("AcquireLease", command, principal).await? {
            Reply::Lease { lease, acquired } => Ok(Response::new(pb::AcquireLeaseResponse {
                lease: Some(convert::lease_to_pb(&lease)),
                acquired,
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let principal = Self::agent_token(&request);
        let r = request.into_inner();
        let token = r.token.map_or(0, |t| t.value);
        let command = Command::RenewLease {
            task_id: r.task_id,
            agent_id: r.agent_id,
            token,
            ttl_seconds: r.ttl_seconds,
        };
        match self.call_as("RenewLease", command, principal).await? {
            Reply::Lease { lease, .. } => Ok(Response::new(pb::RenewLeaseResponse {
                lease: Some(convert::lease_to_pb(&lease)),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let principal = Self::agent_token(&request);
        let r = request.into_inner();
        let token = r.token.map_or(0, |t| t.value);
        let command = Command::ReleaseLease {
            task_id: r.task_id,
            agent_id: r.agent_id,
            token,
        };
        self.call_as("ReleaseLease", command, principal).await?;
        Ok(Response::new(pb::ReleaseLeaseResponse {}))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let r = request.into_inner();
        let command = Command::ListLeases {
            prefix: r.prefix,
            page_size: r.page_size,
            page_token: r.page_token,
        };
        match self.call("ListLeases", command).await? {
            Reply::Leases {
                leases,
                next_page_token,
            } => Ok(Response::new(pb::ListLeasesResponse {
                leases: leases.iter().map(convert::lease_to_pb).collect(),
                next_page_token,
            })),
            other => Err(unexpected(&other)),
        }
    }
}

#[tonic::async_trait]
impl pb::election_service_server::ElectionService for Api {
    async fn campaign(&self, request: Request<pb::CampaignRequest>) -> Result<Response<pb::CampaignResponse>, Status> {
        let r = request.into_inner();
        match self
            .call(
                "Campaign",
                Command::Campaign {
                    group: r.group,
                    agent_id: r.agent_id,
                },
            )
            .await?
        {
            Reply::Election(state) => Ok(Response::new(pb::CampaignResponse {
                state: Some(convert::election_to_pb(&state)),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn resign(&self, request: Request<pb::ResignRequest>) -> Result<Response<pb::ResignResponse>, Status> {
        let r = request.into_inner();
        self.call(
            "Resign",
            Command::Resign {
                group: r.group,
                agent_id: r.agent_id,
            },
        )
        .await?;
        Ok(Response::new(pb::ResignResponse {}))
    }

    async fn list_elections(
        &self,
        request: Request<pb::ListElectionsRequest>,
    ) -> Result<Response<pb::ListElectionsResponse>, Status> {
        let r = request.into_inner();
        let want = crate::core::validate::page_size(r.page_size).min(pages::SLICE_MAX);
        let page = self
            .gather("ListElections", &ElectionSlices, want, r.page_token)
            .await?;
        Ok(Response::new(pb::ListElectionsResponse {
            groups: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    type WatchElectionStream = EventStreamBox;

    async fn watch_election(
        &self,
        request: Request<pb::WatchElectionRequest>,
    ) -> Result<Response<Self::WatchElectionStream>, Status> {
        let group = request.into_inner().group;
        let (reply, mut stream) = self
            .subscribe("WatchElection", Command::WatchElection { group })
            .await?;
        if let Reply::WatchingElection { state, .. } = reply {
            stream.first = Some(convert::election_snapshot_to_pb(&state));
        }
        Ok(subscribed(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl pb::entitlements_service_server::EntitlementsService for Api {
    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let policy = convert::policy_from_pb(request.into_inner().policy.unwrap_or_default());
        match self
            .call(
                "SetPolicy",
                Command::SetPolicy {
                    policy: Box::new(policy),
                },
            )
            .await?
        {
            Reply::Policy(policy) => Ok(Response::new(pb::SetPolicyResponse {
                policy: Some(convert::policy_to_pb(&policy)),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let id = request.into_inner().id;
        self.call("DeletePolicy", Command::DeletePolicy { id }).await?;
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let r = request.into_inner();
        // A v1 client sends no page size and expects the whole list: as much as fits one answer.
        let want = match r.page_size {
            0 => usize::MAX,
            size => crate::core::validate::page_size(size),
        };
        let slices = PolicySlices {
            subject_prefix: r.subject_prefix,
        };
        let page = self.gather("ListPolicies", &slices, want, r.page_token).await?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    async fn check_policy(
        &self,
        request: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        let r = request.into_inner();
        let command = Command::CheckPolicy {
            subject: r.subject,
            action: r.action,
            resource: r.resource,
        };
        match self.call("CheckPolicy", command).await? {
            Reply::Decision(decision) => Ok(Response::new(convert::decision_to_pb(decision))),
            other => Err(unexpected(&other)),
        }
    }
}

/// How long a claim may wait, and when the handler gives up on the core's answer by itself.
/// The wait is what the client asked (`wait_ms`), at most `--claim-wait-max`, and always short
/// of the call's own deadline, so that "no task" arrives as an empty answer rather than
/// DEADLINE_EXCEEDED. With the real clock the core answers at the end of the wait; under a
/// manual clock time may stand still, and the handler's own limit (between the wait and the
/// deadline) ends the call.
fn claim_wait(asked_ms: Option<u32>, deadline: Option<Duration>, cap: Duration) -> (Duration, Duration) {
    let wait = asked_ms.map_or(cap, |ms| Duration::from_millis(u64::from(ms))).min(cap);
    match deadline {
        None => (wait, wait + CLAIM_SLACK),
        Some(deadline) => {
            let margin = (deadline / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
            let wait = wait.min(deadline.saturating_sub(margin));
            (wait, (wait + CLAIM_SLACK).min(deadline.saturating_sub(margin / 2)))
        }
    }
}

/// The call's deadline from its `grpc-timeout` header ("<digits><H|M|S|m|u|n>"), if any.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let text = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Slack past a claim's wait before the call gives up on the core's answer by itself: with the
/// real clock the core answers first; with a manual clock (time stands still) this ends it.
const CLAIM_SLACK: Duration = Duration::from_millis(250);

#[tonic::async_trait]
impl pb::task_service_server::TaskService for Api {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::CreateTaskResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        let command = Command::CreateTask {
            kind: r.r#type,
            input: r.input,
            required_tools: r.required_tools,
            max_retries: r.max_retries,
            ttl_seconds: r.ttl_seconds,
        };
        let command = super::numbered::numbered(&metadata, command)?;
        match self.call("CreateTask", command).await? {
            Reply::Task(task) => Ok(Response::new(pb::CreateTaskResponse {
                task: Some(convert::task_to_pb(&task)),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn claim_task(
        &self,
        request: Request<pb::ClaimTaskRequest>,
    ) -> Result<Response<pb::ClaimTaskResponse>, Status> {
        let deadline = grpc_timeout(&request);
        let r = request.into_inner();
        let (wait, give_up) = claim_wait(r.wait_ms, deadline, self.claim_wait_max);
        let command = Command::ClaimTask {
            agent_id: r.agent_id,
            wait_ms: wait.as_millis() as u64,
        };
        // Giving up drops the reply's receiver: the driver then cancels the waiting claim, or,
        // if a task was handed over meanwhile, puts it back to PENDING.
        let reply = match tokio::time::timeout(give_up, self.call("ClaimTask", command)).await {
            Ok(reply) => reply?,
            Err(_) => Reply::NoTask,
        };
        match reply {
            Reply::Claimed { task, lease } => Ok(Response::new(pb::ClaimTaskResponse {
                task: Some(convert::task_to_pb(&task)),
                lease: Some(convert::lease_to_pb(&lease)),
            })),
            Reply::NoTask => Ok(Response::new(pb::ClaimTaskResponse {
                task: None,
                lease: None,
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let r = request.into_inner();
        let command = Command::CompleteTask {
            task_id: r.task_id,
            agent_id: r.agent_id,
            output: r.output,
        };
        self.call("CompleteTask", command).await?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn fail_task(&self, request: Request<pb::FailTaskRequest>) -> Result<Response<pb::FailTaskResponse>, Status> {
        let r = request.into_inner();
        let command = Command::FailTask {
            task_id: r.task_id,
            agent_id: r.agent_id,
            reason: r.reason,
        };
        self.call("FailTask", command).await?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::GetTaskResponse>, Status> {
        let task_id = request.into_inner().task_id;
        match self.call("GetTask", Command::GetTask { task_id }).await? {
            Reply::Task(task) => Ok(Response::new(pb::GetTaskResponse {
                task: Some(convert::task_to_pb(&task)),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = request.into_inner();
        let slices = TaskSlices {
            status: convert::task_status_filter(r.status)?,
        };
        let want = crate::core::validate::page_size(r.page_size);
        let outcome = pages::gather_tasks(&self.core, &slices, want, r.page_token).await;
        self.count("ListTasks", &outcome);
        let (tasks, next_page_token) = outcome.map_err(convert::status)?.map_err(|other| unexpected(&other))?;
        Ok(Response::new(pb::ListTasksResponse { tasks, next_page_token }))
    }
}

fn duration_ms(duration: Option<prost_types::Duration>) -> Result<crate::core::types::Millis, Status> {
    let duration = duration.unwrap_or_default();
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err(Status::invalid_argument("duration must not be negative"));
    }
    let ms = (duration.seconds as u64)
        .saturating_mul(1000)
        .saturating_add(duration.nanos as u64 / 1_000_000);
    Ok(ms)
}

/// ClockService: moves a manual clock; a real-clock daemon answers FAILED_PRECONDITION.
#[tonic::async_trait]
impl pb::clock_service_server::ClockService for Api {
    async fn advance(&self, request: Request<pb::AdvanceRequest>) -> Result<Response<pb::AdvanceResponse>, Status> {
        let by_ms = duration_ms(request.into_inner().duration)?;
        let outcome = self.core.clock(Some(by_ms)).await;
        self.count("Advance", &outcome);
        let now = outcome.map_err(convert::status)?;
        Ok(Response::new(pb::AdvanceResponse {
            now: convert::timestamp(now),
        }))
    }

    async fn now(&self, _: Request<pb::NowRequest>) -> Result<Response<pb::NowResponse>, Status> {
        let outcome = self.core.clock(None).await;
        self.count("Now", &outcome);
        let now = outcome.map_err(convert::status)?;
        Ok(Response::new(pb::NowResponse {
            now: convert::timestamp(now),
        }))
    }
}
