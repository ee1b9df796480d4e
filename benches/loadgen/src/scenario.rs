//! The work each scenario does: its set-up (agents, policies, watchers, made before timing) and
//! one operation, as a worker repeats it.
//!
//! Invariant: set-up never counts toward the measurement; one `op` is one user-visible action
//! (acquire-release is two calls and counts as one operation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agentkeeper::proto as pb;
use clap::ValueEnum;
use pb::entitlements_service_client::EntitlementsServiceClient;
use pb::lease_service_client::LeaseServiceClient;
use pb::registry_service_client::RegistryServiceClient;
use pb::task_service_client::TaskServiceClient;
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Heartbeat,
    Acquire,
    AcquireRelease,
    Renew,
    CheckPolicy,
    Find,
    Register,
    GetAgent,
    Mixed,
    WatchFanout,
    /// A task's whole life: CreateTask, ClaimTask (long-poll), CompleteTask.
    TaskCycle,
    /// ClaimTask + CompleteTask against a queue pre-filled during set-up (`--tasks`).
    Claim,
    /// SetPolicy over a key space of `--policies` ids (created or overwritten): one write, the
    /// durable-write scenario with `--data-dir`.
    SetPolicy,
    /// Heartbeats on a RegistryService.KeepAlive stream each worker holds open: one message of
    /// `--batch` agents (1: unbatched), then its answer.
    StreamHeartbeat,
    /// Renewals of the worker's own lease (acquired on its first operation) on a
    /// LeaseService.KeepAlive stream it holds open: one renewal per message, then its answer;
    /// etcd's LeaseKeepAlive is the same work.
    StreamRenew,
}

const WORDS: [&str; 16] = [
    "fetch",
    "parse",
    "web",
    "pages",
    "sql",
    "tables",
    "review",
    "pull",
    "requests",
    "translate",
    "documents",
    "deploy",
    "kubernetes",
    "summarise",
    "meetings",
    "invoices",
];

/// What every worker shares: ids made during set-up, and for watch-fanout the send times.
pub struct Shared {
    pub agents: Vec<String>,
    pub policies: usize,
    /// Distinct card texts among the agents registered (0: every card its own).
    pub distinct_cards: usize,
    pub sent: Mutex<HashMap<String, Instant>>,
}

/// What set-up makes before timing.
pub struct SetUp {
    pub scenario: Scenario,
    /// Agents registered (long ttl).
    pub agents: usize,
    /// Policies set (check-policy, mixed, set-policy's key space).
    pub policies: usize,
    /// Pending tasks created (claim).
    pub tasks: usize,
    /// Leases acquired (any scenario), `bench:lease:<i>`, spread over the agents.
    pub leases: usize,
    /// Calls in flight during set-up.
    pub concurrency: usize,
    /// Drive agents a previous set-up registered (the first `agents` Find answers, at most
    /// 1000) instead of registering new ones.
    pub reuse_agents: bool,
    /// Distinct card texts among the agents registered, in set-up and by the register scenario
    /// (0: every card its own): replicas share one sentence encoding.
    pub distinct_cards: usize,
}

/// Set-up before timing: the agents, leases, policies and tasks `plan` asks for, many calls in
/// flight at once over every connection; progress and rates go to stderr.
pub async fn set_up(channels: &[Channel], plan: &SetUp) -> Result<Shared, String> {
    let started = Instant::now();
    if plan.reuse_agents {
        let mut registry = RegistryServiceClient::new(channels[0].clone());
        let request = pb::FindRequest {
            query: String::new(),
            tools: Vec::new(),
            limit: u32::try_from(plan.agents).unwrap_or(u32::MAX),
        };
        let found = registry.find(request).await.map_err(|e| format!("set-up find: {e}"))?;
        let ids: Vec<String> = found.into_inner().agents.into_iter().map(|a| a.agent_id).collect();
        if ids.is_empty() {
            return Err("set-up: --reuse-agents found no ALIVE agent".into());
        }
        eprintln!("set-up: driving {} agents already registered", ids.len());
        return Ok(Shared {
            agents: ids,
            policies: 0,
            distinct_cards: plan.distinct_cards,
            sent: Mutex::new(HashMap::new()),
        });
    }
    let cards: Vec<pb::AgentCard> = (0..plan.agents).map(|i| card(i, plan.distinct_cards)).collect();
    let ids = in_flight(channels, plan.concurrency, cards, |channel, card| async move {
        let mut registry = RegistryServiceClient::new(channel);
        let request = pb::RegisterRequest {
            card: Some(card),
            ttl_seconds: 86_400,
        };
        let reply = registry
            .register(request)
            .await
            .map_err(|e| format!("set-up register: {e}"))?;
        Ok(reply.into_inner().agent_id)
    })
    .await?;
    report("agents registered", plan.agents, started);
    let started = Instant::now();
    let requests: Vec<pb::AcquireLeaseRequest> = (0..plan.leases)
        .map(|i| pb::AcquireLeaseRequest {
            task_id: format!("bench:lease:{i:08}"),
            agent_id: ids[i % ids.len().max(1)].clone(),
            ttl_seconds: 86_400,
        })
        .collect();
    in_flight(channels, plan.concurrency, requests, |channel, request| async move {
        let mut leases = LeaseServiceClient::new(channel);
        let reply = leases
            .acquire_lease(request)
            .await
            .map_err(|e| format!("set-up acquire: {e}"))?;
        match reply.into_inner().acquired {
            true => Ok(()),
            false => Err("set-up acquire: the key was held already".to_string()),
        }
    })
    .await?;
    report("leases acquired", plan.leases, started);
    let scenario = plan.scenario;
    let key_space = if matches!(scenario, Scenario::CheckPolicy | Scenario::Mixed | Scenario::SetPolicy) {
        plan.policies
    } else {
        0
    };
    let created = if scenario == Scenario::SetPolicy { 0 } else { key_space };
    let policies: Vec<pb::Policy> = (0..created)
        .map(|i| {
            let effect = if i % 10 == 0 {
                pb::PolicyEffect::Deny
            } else {
                pb::PolicyEffect::Allow
            };
            policy(i, effect)
        })
        .collect();
    in_flight(channels, plan.concurrency, policies, |channel, policy| async move {
        let mut entitlements = EntitlementsServiceClient::new(channel);
        let request = pb::SetPolicyRequest { policy: Some(policy) };
        entitlements
            .set_policy(request)
            .await
            .map_err(|e| format!("set-up set_policy: {e}"))?;
        Ok(())
    })
    .await?;
    if scenario == Scenario::Claim {
        let requests: Vec<pb::CreateTaskRequest> = (0..plan.tasks as u64).map(task_request).collect();
        in_flight(channels, plan.concurrency, requests, |channel, request| async move {
            let mut queue = TaskServiceClient::new(channel);
            queue
                .create_task(request)
                .await
                .map_err(|e| format!("set-up create_task: {e}"))?;
            Ok(())
        })
        .await?;
    }
    Ok(Shared {
        agents: ids,
        policies: key_space,
        distinct_cards: plan.distinct_cards,
        sent: Mutex::new(HashMap::new()),
    })
}

/// The card of set-up agent `i`: three of the bench's words, one of eight tools; with
/// `distinct` > 0, one of `distinct` such cards (replicas of one card).
pub fn card(i: usize, distinct: usize) -> pb::AgentCard {
    let i = if distinct > 0 { i % distinct } else { i };
    pb::AgentCard {
        name: format!("bench-agent-{i}"),
        description: format!("{} {} {}", WORDS[i % 16], WORDS[(i / 16) % 16], WORDS[(i / 256) % 16]),
        tools: vec![format!("tool{}", i % 8)],
        ..Default::default()
    }
}

fn report(what: &str, n: usize, started: Instant) {
    if n > 0 {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("set-up: {n} {what} in {seconds:.1} s ({:.0}/s)", n as f64 / seconds);
    }
}

/// Runs `call` on every item with `concurrency` calls in flight, spread over the channels;
/// returns the answers in the items' order.
async fn in_flight<T, R, F, Fut>(
    channels: &[Channel],
    concurrency: usize,
    items: Vec<T>,
    call: F,
) -> Result<Vec<R>, String>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Channel, T) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<R, String>> + Send,
{
    let lanes = concurrency.max(1).min(items.len().max(1));
    let mut queues: Vec<Vec<(usize, T)>> = (0..lanes).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        queues[i % lanes].push((i, item));
    }
    let mut tasks = Vec::with_capacity(lanes);
    for (lane, queue) in queues.into_iter().enumerate() {
        let (channel, call) = (channels[lane % channels.len()].clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::with_capacity(queue.len());
            for (i, item) in queue {
                answers.push((i, call(channel.clone(), item).await?));
            }
            Ok::<_, String>(answers)
        }));
    }
    let mut answers: Vec<(usize, R)> = Vec::new();
    for task in tasks {
        answers.extend(task.await.map_err(|e| format!("set-up task: {e}"))??);
    }
    answers.sort_unstable_by_key(|(i, _)| *i);
    Ok(answers.into_iter().map(|(_, r)| r).collect())
}

/// Policy `i` of the bench's key space.
pub fn policy(i: usize, effect: pb::PolicyEffect) -> pb::Policy {
    pb::Policy {
        id: format!("bench-{i:07}"),
        subject: format!("agent:a{i}"),
        action: "call".into(),
        resource: format!("tool:t{}", i % 100),
        effect: effect as i32,
    }
}

/// A small task any agent may claim (no required tools).
fn task_request(n: u64) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        r#type: "bench".into(),
        input: n.to_le_bytes().to_vec(),
        required_tools: Vec::new(),
        max_retries: 3,
        ttl_seconds: 600,
    }
}

/// One worker's clients and state.
pub struct Worker {
    pub id: usize,
    registry: RegistryServiceClient<Channel>,
    leases: LeaseServiceClient<Channel>,
    entitlements: EntitlementsServiceClient<Channel>,
    tasks: TaskServiceClient<Channel>,
    shared: Arc<Shared>,
    counter: u64,
    renewing: Option<(String, String, u64)>,
    /// Agents per keep-alive message (stream-heartbeat).
    batch: usize,
    /// The open keep-alive stream (stream-heartbeat): where messages go, where answers come.
    keep_alive: Option<(
        tokio::sync::mpsc::Sender<pb::KeepAliveRequest>,
        tonic::Streaming<pb::KeepAliveResponse>,
    )>,
    /// The open lease keep-alive stream (stream-renew).
    lease_keep_alive: Option<(
        tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>,
        tonic::Streaming<pb::LeaseKeepAliveResponse>,
    )>,
}

impl Worker {
    pub fn new(id: usize, channel: &Channel, shared: Arc<Shared>, batch: usize) -> Self {
        Worker {
            id,
            registry: RegistryServiceClient::new(channel.clone()),
            leases: LeaseServiceClient::new(channel.clone()),
            entitlements: EntitlementsServiceClient::new(channel.clone()),
            tasks: TaskServiceClient::new(channel.clone()),
            shared,
            counter: 0,
            renewing: None,
            batch: batch.max(1),
            keep_alive: None,
            lease_keep_alive: None,
        }
    }

    fn agent(&self) -> String {
        let agents = &self.shared.agents;
        agents[(self.id + self.counter as usize * 7919) % agents.len()].clone()
    }

    /// One operation of `scenario`.
    pub async fn op(&mut self, scenario: Scenario) -> Result<(), tonic::Status> {
        self.counter += 1;
        match scenario {
            Scenario::Heartbeat => self.heartbeat().await,
            Scenario::Acquire | Scenario::WatchFanout => self.acquire(false).await,
            Scenario::AcquireRelease => self.acquire(true).await,
            Scenario::Renew => self.renew().await,
            Scenario::CheckPolicy => self.check().await,
            Scenario::Find => self.find().await,
            Scenario::Register => self.register().await,
            Scenario::GetAgent => self.get_agent().await,
            Scenario::TaskCycle => self.task_cycle(true).await,
            Scenario::Claim => self.task_cycle(false).await,
            Scenario::SetPolicy => self.set_policy().await,
            Scenario::StreamHeartbeat => self.stream_heartbeat().await,
            Scenario::StreamRenew => self.stream_renew().await,
            Scenario::Mixed => match self.counter % 20 {
                0..=13 => self.heartbeat().await,
                14 | 15 => self.acquire(true).await,
                16 | 17 => self.check().await,
                18 => self.find().await,
                _ => self.get_agent().await,
            },
        }
    }

    async fn heartbeat(&mut self) -> Result<(), tonic::Status> {
        let agent_id = self.agent();
        self.registry
            .heartbeat(pb::HeartbeatRequest { agent_id })
            .await
            .map(|_| ())
    }

    async fn stream_heartbeat(&mut self) -> Result<(), tonic::Status> {
        if self.keep_alive.is_none() {
            let (send, receive) = tokio::sync::mpsc::channel(4);
            let stream = tokio_stream::wrappers::ReceiverStream::new(receive);
            let answers = self.registry.keep_alive(stream).await?.into_inner();
            self.keep_alive = Some((send, answers));
        }
        let agent_ids = (0..self.batch)
            .map(|i| {
                let agents = &self.shared.agents;
                agents[(self.id + (self.counter as usize * self.batch + i) * 7919) % agents.len()].clone()
            })
            .collect();
        let (send, answers) = self.keep_alive.as_mut().expect("opened above");
        let request = pb::KeepAliveRequest {
            agent_ids,
            batch_id: self.counter,
        };
        if send.send(request).await.is_err() {
            self.keep_alive = None;
            return Err(tonic::Status::unavailable("the keep-alive stream ended"));
        }
        match answers.message().await {
            Ok(Some(answer)) if answer.results.iter().all(|r| r.code == 0) => Ok(()),
            Ok(Some(answer)) => Err(tonic::Status::internal(format!("an item failed: {:?}", answer.results))),
            Ok(None) => {
                self.keep_alive = None;
                Err(tonic::Status::unavailable("the keep-alive stream ended"))
            }
            Err(status) => {
                self.keep_alive = None;
                Err(status)
            }
        }
    }

    async fn stream_renew(&mut self) -> Result<(), tonic::Status> {
        let (task_id, agent_id, token) = self.held_lease().await?;
        if self.lease_keep_alive.is_none() {
            let (send, receive) = tokio::sync::mpsc::channel(4);
            let stream = tokio_stream::wrappers::ReceiverStream::new(receive);
            let answers = self.leases.keep_alive(stream).await?.into_inner();
            self.lease_keep_alive = Some((send, answers));
        }
        let (send, answers) = self.lease_keep_alive.as_mut().expect("opened above");
        let request = pb::LeaseKeepAliveRequest {
            renewals: vec![pb::RenewLeaseRequest {
                task_id,
                agent_id,
                token: Some(pb::FencingToken { value: token }),
                ttl_seconds: 600,
            }],
            batch_id: self.counter,
        };
        if send.send(request).await.is_err() {
            self.lease_keep_alive = None;
            return Err(tonic::Status::unavailable("the lease keep-alive stream ended"));
        }
        match answers.message().await {
            Ok(Some(answer)) if answer.results.iter().all(|r| r.code == 0) => Ok(()),
            Ok(Some(answer)) => Err(tonic::Status::internal(format!(
                "a renewal failed: {:?}",
                answer.results.iter().map(|r| (r.code, &r.message)).collect::<Vec<_>>()
            ))),
            Ok(None) => {
                self.lease_keep_alive = None;
                Err(tonic::Status::unavailable("the lease keep-alive stream ended"))
            }
            Err(status) => {
                self.lease_keep_alive = None;
                Err(status)
            }
        }
    }

    async fn get_agent(&mut self) -> Result<(), tonic::Status> {
        let agent_id = self.agent();
        self.registry
            .get_agent(pb::GetAgentRequest { agent_id })
            .await
            .map(|_| ())
    }

    async fn register(&mut self) -> Result<(), tonic::Status> {
        let card = match self.shared.distinct_cards {
            0 => pb::AgentCard {
                name: format!("w{}-{}", self.id, self.counter),
                ..Default::default()
            },
            distinct => card(self.id * 1_000_003 + self.counter as usize, distinct),
        };
        self.registry
            .register(pb::RegisterRequest {
                card: Some(card),
                ttl_seconds: 86_400,
            })
            .await
            .map(|_| ())
    }

    async fn acquire(&mut self, release: bool) -> Result<(), tonic::Status> {
        let task_id = format!("bench:w{}:{}", self.id, self.counter);
        let agent_id = self.agent();
        self.shared
            .sent
            .lock()
            .expect("not poisoned")
            .insert(task_id.clone(), Instant::now());
        let request = pb::AcquireLeaseRequest {
            task_id: task_id.clone(),
            agent_id: agent_id.clone(),
            ttl_seconds: 600,
        };
        let lease = self.leases.acquire_lease(request).await?.into_inner().lease;
        if release {
            let token = lease.and_then(|l| l.token);
            self.leases
                .release_lease(pb::ReleaseLeaseRequest {
                    task_id,
                    agent_id,
                    token,
                })
                .await?;
        }
        Ok(())
    }

    /// The worker's own lease (task id, agent, fencing token), acquired on first use.
    async fn held_lease(&mut self) -> Result<(String, String, u64), tonic::Status> {
        if self.renewing.is_none() {
            // The process id in the key: another run against the same daemon (compare.sh runs
            // every shape on one) finds its own keys free, not this run's leases.
            let task_id = format!("bench:renew:{}:w{}", std::process::id(), self.id);
            let agent_id = self.agent();
            let request = pb::AcquireLeaseRequest {
                task_id: task_id.clone(),
                agent_id: agent_id.clone(),
                ttl_seconds: 600,
            };
            let answer = self.leases.acquire_lease(request).await?.into_inner();
            let lease = match (answer.acquired, answer.lease) {
                (true, Some(lease)) => lease,
                _ => return Err(tonic::Status::already_exists(format!("{task_id} is held already"))),
            };
            self.renewing = Some((task_id, agent_id, lease.token.expect("token set").value));
        }
        Ok(self.renewing.clone().expect("set above"))
    }

    async fn renew(&mut self) -> Result<(), tonic::Status> {
        let (task_id, agent_id, token) = self.held_lease().await?;
        let request = pb::RenewLeaseRequest {
            task_id,
            agent_id,
            token: Some(pb::FencingToken { value: token }),
            ttl_seconds: 600,
        };
        self.leases.renew_lease(request).await.map(|_| ())
    }

    /// (Create,) claim and complete one task. The claim long-polls, so a worker whose task was
    /// taken by another waits for the next one instead of failing.
    async fn task_cycle(&mut self, create: bool) -> Result<(), tonic::Status> {
        if create {
            self.tasks.create_task(task_request(self.counter)).await?;
        }
        let agent_id = self.agent();
        let claim = pb::ClaimTaskRequest {
            agent_id: agent_id.clone(),
            wait_ms: Some(5_000),
        };
        let answer = self.tasks.claim_task(claim).await?.into_inner();
        let Some(task) = answer.task else {
            return Err(tonic::Status::deadline_exceeded("no task to claim within 5 s"));
        };
        self.tasks
            .complete_task(pb::CompleteTaskRequest {
                task_id: task.id,
                agent_id,
                output: Vec::new(),
            })
            .await
            .map(|_| ())
    }

    async fn check(&mut self) -> Result<(), tonic::Status> {
        let n = (self.id as u64 * 1_000_003 + self.counter * 7_919) % self.shared.policies.max(1) as u64;
        let request = pb::CheckPolicyRequest {
            subject: format!("agent:a{n}"),
            action: "call".into(),
            resource: format!("tool:t{}", n % 100),
        };
        self.entitlements.check_policy(request).await.map(|_| ())
    }

    async fn set_policy(&mut self) -> Result<(), tonic::Status> {
        let n = (self.id as u64 * 1_000_003 + self.counter * 7_919) % self.shared.policies.max(1) as u64;
        let effect = if self.counter.is_multiple_of(2) {
            pb::PolicyEffect::Allow
        } else {
            pb::PolicyEffect::Deny
        };
        let request = pb::SetPolicyRequest {
            policy: Some(policy(n as usize, effect)),
        };
        self.entitlements.set_policy(request).await.map(|_| ())
    }

    async fn find(&mut self) -> Result<(), tonic::Status> {
        let c = self.counter as usize;
        let query = format!("{} {}", WORDS[c % 16], WORDS[(c / 3) % 16]);
        let tools = if c.is_multiple_of(2) {
            vec![format!("tool{}", c % 8)]
        } else {
            Vec::new()
        };
        self.registry
            .find(pb::FindRequest {
                query,
                tools,
                limit: 10,
            })
            .await
            .map(|_| ())
    }
}
