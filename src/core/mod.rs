//! The deterministic, sans-IO state machine: registry, leases, elections, entitlements, the
//! event bus, search and timers, all owned by one `Core` that one thread drives.
//!
//! Architecture invariant: the core never reads a clock, a socket, a file or the OS RNG, never
//! spawns or locks, and never lets hash-map order reach an output. Time comes in as `now`,
//! randomness from the seeded RNG in `ids`. Protobuf types never enter here.

pub mod elections;
pub mod entitlements;
pub mod entry;
pub mod events;
pub mod find;
pub mod ids;
pub mod inspect;
pub mod keepalive;
pub mod leases;
pub mod listing;
pub mod machine;
pub mod registry;
pub mod search;
pub mod sessions;
pub mod snapshot;
pub mod tasks;
pub mod timers;
pub mod types;
pub mod validate;
pub mod vectorless;

use std::fmt;
use std::sync::Arc;

use elections::ElectionTable;
use entitlements::PolicyTable;
use events::{Delivery, ElectionView, EventBus, LeaseView, SubscriberId};
use ids::IdSource;
use leases::LeaseTable;
use registry::Registry;
use search::card_text::CardDigest;
use search::vectors::{CardVector, ModelVector};
use tasks::{TaskQueue, TaskStatus, TaskView, WaiterId};
use timers::TimerWheel;
use types::{AgentCard, Decision, Millis, Policy, TokenId};

pub use events::{AgentView, Event, EventPayload, Topic};

/// Bounds and defaults the core enforces; every one has a name and a reason.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Seeds the RNG behind ids and hash seeds: the same seed, the same run.
    pub seed: u64,
    /// How long a DEAD agent stays visible to GetAgent before it is forgotten.
    pub dead_retention_ms: u64,
    /// How many recent events are kept for `from_sequence` resume.
    pub event_ring_max: usize,
    /// Open watch streams at most.
    pub watchers_max: usize,
    /// Known agents (any status) at most.
    pub agents_max: usize,
    /// Leases held at most.
    pub leases_max: usize,
    /// Policies at most.
    pub policies_max: usize,
    /// Election groups at most (a group is kept forever once created, so it is bounded).
    pub groups_max: usize,
    /// Tasks held at most (any status; finished ones count until forgotten).
    pub tasks_max: usize,
    /// Input and output bytes all held tasks may hold together.
    pub task_bytes_max: usize,
    /// Claims waiting for a task at most.
    pub waiters_max: usize,
    /// How long a COMPLETED or DEAD task stays visible before it is forgotten.
    pub task_retention_ms: u64,
    /// A deliberate bug, for proving that the simulator's checks catch one. Never set outside
    /// tests: no flag reaches it.
    pub planted_bug: PlantedBug,
}

/// Deliberate bugs the simulator's own tests plant to show its checker fails when it should.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlantedBug {
    #[default]
    None,
    /// Hands out the previous fencing token again on every tenth grant.
    ReuseFencingToken,
    /// Releases replies and deliveries without waiting for their entries to be durable.
    ReplyBeforeDurable,
}

impl CoreConfig {
    /// A digest of the settings that decide what applying a logged command does (the limits and
    /// the retentions): the replicas of a cluster must agree on it, or the same log would give
    /// them different states. The seed is left out (a cluster's members share it by
    /// construction), and so are the settings of what a node serves locally (watch streams,
    /// the events kept for resuming them).
    pub fn replicated_digest(&self) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        for value in [
            self.dead_retention_ms,
            self.task_retention_ms,
            self.agents_max as u64,
            self.leases_max as u64,
            self.policies_max as u64,
            self.groups_max as u64,
            self.tasks_max as u64,
            self.task_bytes_max as u64,
            self.waiters_max as u64,
        ] {
            hasher.update(&value.to_le_bytes());
        }
        hasher.finalize()
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            seed: 0,
            dead_retention_ms: 3_600_000,
            event_ring_max: 100_000,
            watchers_max: crate::limits::WATCHERS_MAX,
            agents_max: crate::limits::AGENTS_MAX,
            leases_max: crate::limits::LEASES_MAX,
            policies_max: crate::limits::POLICIES_MAX,
            groups_max: crate::limits::GROUPS_MAX,
            tasks_max: crate::limits::TASKS_MAX,
            task_bytes_max: crate::limits::TASK_BYTES_MAX,
            waiters_max: crate::limits::WAITERS_MAX,
            task_retention_ms: 24 * 3_600_000,
            planted_bug: PlantedBug::None,
        }
    }
}

/// Everything a client can ask of the core. Strings are as they came off the wire; the core
/// validates them (see `validate`) before anything changes. The store logs the writes as its
/// own versioned record type (`store::format`), never as this enum, and replays them.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `vector`: the card's vector, when the daemon had its text's already (the embedding
    /// workers' cache; raised by the daemon, never by a client): applied with the registration
    /// exactly as a `SetCardVector` right after it would be, and left out (the card stays
    /// lexical until a `SetCardVector` gives it one) where that would be refused. One command
    /// and one log record where there were two.
    Register {
        /// Boxed: the card is the largest thing a command carries, and every command of every
        /// kind is moved between threads as an enum as large as its largest variant.
        card: Box<AgentCard>,
        ttl_seconds: u32,
        vector: Option<Arc<CardVector>>,
    },
    /// A creating write (Register or CreateTask) numbered by its client: applied once however
    /// often it comes, and answered as the first time (`core::sessions`).
    Once {
        request: sessions::RequestId,
        command: Box<Command>,
    },
    Heartbeat {
        agent_id: String,
    },
    /// Many Heartbeat and RenewLease calls as one step (a keep-alive stream's message): each
    /// item applied in order as its unary call would be, answered item by item
    /// (`Reply::KeepAlive`); at most `limits::KEEPALIVE_ITEMS_MAX` (see `keepalive`).
    KeepAlive {
        items: Vec<Command>,
    },
    Deregister {
        agent_id: String,
    },
    GetAgent {
        agent_id: String,
    },
    /// `vector`: the query's sentence vector and its model, computed before the command entered
    /// the core (none without a model, or when the encoder was too slow: the ranking is
    /// lexical); it is scored against the card vectors of its model and dimension only.
    Find {
        query: String,
        tools: Vec<String>,
        limit: u32,
        vector: Option<ModelVector>,
    },
    /// A card's sentence vector, computed off the core by an embedding worker from the card's
    /// text (`search::card_text`); applied only while the agent still has the card `card_digest`
    /// names (raised by the daemon, never by a client). It replaces the card's vector, whichever
    /// model made that one.
    SetCardVector {
        agent_id: String,
        card_digest: CardDigest,
        vector: ModelVector,
    },
    /// Live agents registered after `after` (a registration number) whose card has no vector of
    /// `model`, a bounded page at a time (`vectorless`): the daemon's background pass reads it
    /// (never a client).
    CardsWithoutVector {
        model: String,
        after: u64,
        limit: u32,
    },
    Watch {
        topics: Vec<String>,
        from_sequence: u64,
    },
    Unwatch {
        subscriber: SubscriberId,
    },
    AcquireLease {
        task_id: String,
        agent_id: String,
        ttl_seconds: u32,
    },
    RenewLease {
        task_id: String,
        agent_id: String,
        token: u64,
        ttl_seconds: u32,
    },
    ReleaseLease {
        task_id: String,
        agent_id: String,
        token: u64,
    },
    Campaign {
        group: String,
        agent_id: String,
    },
    Resign {
        group: String,
        agent_id: String,
    },
    WatchElection {
        group: String,
    },
    SetPolicy {
        /// Boxed, as `Register`'s card.
        policy: Box<PolicyInput>,
    },
    DeletePolicy {
        id: String,
    },
    /// Policies by id whose subject starts with `subject_prefix`, a page at a time (a v1
    /// request, with no page size, is the first page with the defaults).
    ListPolicies {
        subject_prefix: String,
        page_size: u32,
        page_token: String,
    },
    CheckPolicy {
        subject: String,
        action: String,
        resource: String,
    },
    CreateTask {
        kind: String,
        input: Vec<u8>,
        required_tools: Vec<String>,
        max_retries: u32,
        ttl_seconds: u32,
    },
    /// Claims the oldest claimable task; with `wait_ms` > 0 and none pending, waits in line
    /// (the driver turns the caller's deadline into `wait_ms`).
    ClaimTask {
        agent_id: String,
        wait_ms: u64,
    },
    /// The caller of a waiting claim went away.
    CancelClaim {
        waiter: WaiterId,
    },
    /// The reply to a claim could not be delivered: the task goes back to PENDING (raised by
    /// the driver, never by a client).
    ReturnTask {
        task_id: String,
        token: u64,
    },
    CompleteTask {
        task_id: String,
        agent_id: String,
        output: Vec<u8>,
    },
    FailTask {
        task_id: String,
        agent_id: String,
        reason: String,
    },
    GetTask {
        task_id: String,
    },
    /// Tasks in creation order from the page token, one status or all. `bytes_left`: what a
    /// page the gRPC handler gathers from several of these has left of its byte allowance (the
    /// tasks' input and output; perhaps none); `None` for a page's first slice, which takes at
    /// least one task.
    ListTasks {
        status: Option<TaskStatus>,
        page_size: u32,
        page_token: String,
        bytes_left: Option<u64>,
    },
    /// Leases whose key starts with `prefix`, by key, a page at a time.
    ListLeases {
        prefix: String,
        page_size: u32,
        page_token: String,
    },
    /// Election groups by name, a page at a time.
    ListElections {
        page_size: u32,
        page_token: String,
    },
    /// The dashboard's view: counts and the first page of each list (see `listing::Overview`).
    Overview {
        agents_max: u32,
        leases_max: u32,
    },
    /// The core's time (ClockService): answered once whatever fired by then is durable.
    Now,
    /// The dashboard's agents: one status (or all) in registration order a page at a time, or
    /// with a query Find's ranking of ALIVE agents.
    ListAgents {
        status: Option<types::AgentStatus>,
        query: String,
        page_size: u32,
        page_token: String,
    },
}

impl Command {
    /// True when the command can change durable state, so a store logs it and its reply waits
    /// until the log is on disk. Reads and watch subscriptions are not logged.
    pub fn is_logged(&self) -> bool {
        if let Command::Once { command, .. } = self {
            return command.is_logged();
        }
        if let Command::KeepAlive { items } = self {
            // A batch holding a read is refused whole, changing nothing: nothing to log.
            return items.iter().all(Command::is_logged);
        }
        !matches!(
            self,
            Command::GetAgent { .. }
                | Command::Find { .. }
                | Command::CardsWithoutVector { .. }
                | Command::ListPolicies { .. }
                | Command::CheckPolicy { .. }
                | Command::Watch { .. }
                | Command::Unwatch { .. }
                | Command::WatchElection { .. }
                | Command::GetTask { .. }
                | Command::ListTasks { .. }
                | Command::ListLeases { .. }
                | Command::ListElections { .. }
                | Command::Overview { .. }
                | Command::Now
                | Command::ListAgents { .. }
        )
    }

    /// A short stable name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Register { .. } => "Register",
            Command::Once { command, .. } => command.name(),
            Command::Heartbeat { .. } => "Heartbeat",
            Command::KeepAlive { .. } => "KeepAlive",
            Command::Deregister { .. } => "Deregister",
            Command::GetAgent { .. } => "GetAgent",
            Command::Find { .. } => "Find",
            Command::SetCardVector { .. } => "SetCardVector",
            Command::CardsWithoutVector { .. } => "CardsWithoutVector",
            Command::Watch { .. } => "Watch",
            Command::Unwatch { .. } => "Unwatch",
            Command::AcquireLease { .. } => "AcquireLease",
            Command::RenewLease { .. } => "RenewLease",
            Command::ReleaseLease { .. } => "ReleaseLease",
            Command::Campaign { .. } => "Campaign",
            Command::Resign { .. } => "Resign",
            Command::WatchElection { .. } => "WatchElection",
            Command::SetPolicy { .. } => "SetPolicy",
            Command::DeletePolicy { .. } => "DeletePolicy",
            Command::ListPolicies { .. } => "ListPolicies",
            Command::CheckPolicy { .. } => "CheckPolicy",
            Command::CreateTask { .. } => "CreateTask",
            Command::ClaimTask { .. } => "ClaimTask",
            Command::CancelClaim { .. } => "CancelClaim",
            Command::ReturnTask { .. } => "ReturnTask",
            Command::CompleteTask { .. } => "CompleteTask",
            Command::FailTask { .. } => "FailTask",
            Command::GetTask { .. } => "GetTask",
            Command::ListTasks { .. } => "ListTasks",
            Command::ListLeases { .. } => "ListLeases",
            Command::ListElections { .. } => "ListElections",
            Command::Overview { .. } => "Overview",
            Command::Now => "Now",
            Command::ListAgents { .. } => "ListAgents",
        }
    }
}

/// A policy as a client sent it: the effect may still be unspecified (which is invalid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInput {
    pub id: String,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub effect: Option<types::Effect>,
}

/// The core's answer to one command.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Done; nothing to return (Heartbeat, Deregister, ReleaseLease, Resign, DeletePolicy).
    Done,
    Registered {
        agent_id: types::AgentId,
    },
    Agent(AgentView),
    Agents(Vec<AgentView>),
    Lease {
        lease: LeaseView,
        acquired: bool,
    },
    Election(ElectionView),
    /// A new event subscription, with the retained events to send before live ones.
    Watching {
        subscriber: SubscriberId,
        replay: Vec<Arc<Event>>,
    },
    /// A new election subscription, with the group's state to send first.
    WatchingElection {
        subscriber: SubscriberId,
        state: ElectionView,
    },
    Policy(Arc<Policy>),
    /// A page of policies; an empty token means the last page.
    Policies {
        policies: Vec<Arc<Policy>>,
        next_page_token: String,
    },
    Decision(Decision),
    Task(Box<TaskView>),
    /// A page of tasks; an empty token means the last page.
    Tasks {
        tasks: Vec<TaskView>,
        next_page_token: String,
    },
    /// A claim granted: the task and its claim lease.
    Claimed {
        task: Box<TaskView>,
        lease: LeaseView,
    },
    /// A page of leases; an empty token means the last page.
    Leases {
        leases: Vec<LeaseView>,
        next_page_token: String,
    },
    /// A page of election groups, each with the head of its line; an empty token means the last.
    Elections {
        groups: Vec<elections::GroupListing>,
        next_page_token: String,
    },
    /// A page of agents, and the event sequence it was read at (events from there on are the
    /// changes after it); an empty token means the last page.
    AgentPage {
        agents: Vec<AgentView>,
        next_page_token: String,
        sequence_next: u64,
    },
    Overview(Box<listing::Overview>),
    /// Nothing to claim (the wait, if any, ran out).
    NoTask,
    /// The claim waits in line; its answer comes later through `drain_claim_answers`.
    ClaimWaiting {
        waiter: WaiterId,
    },
    /// The core's time.
    Now(Millis),
    /// A keep-alive batch's answers, one per item in the batch's order.
    KeepAlive(Vec<Outcome>),
    /// A page of live agents' cards without a vector of the model asked about, and the cursor
    /// to go on from (`None`: the walk reached the end).
    VectorlessCards {
        cards: Vec<vectorless::VectorlessCard>,
        next: Option<u64>,
    },
}

/// The status classes of the behaviour contract's Errors section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    PermissionDenied,
    FailedPrecondition,
    ResourceExhausted,
    OutOfRange,
    /// The daemon is shutting down (raised by the driver, never by the core's own logic).
    Unavailable,
}

/// An operating error: a class and one human sentence naming the thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreError {
    pub code: ErrorCode,
    pub message: String,
}

impl CoreError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CoreError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for CoreError {}

pub type Outcome = Result<Reply, CoreError>;

/// What a timer stands for. Slab keys are safe here because every owner cancels its timer
/// before its key is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// An agent's next liveness transition (UNREACHABLE, then DEAD) or, once DEAD, its forgetting.
    Agent(usize),
    /// A lease's expiry.
    Lease(usize),
    /// A waiting claim's end of patience.
    Claim(usize),
    /// A finished task's forgetting.
    Task(usize),
}

/// Counts for gauges and the dashboard; cheap to compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub agents_alive: usize,
    pub agents_unreachable: usize,
    pub agents_dead: usize,
    pub leases: usize,
    pub groups: usize,
    pub policies: usize,
    pub watchers: usize,
    pub sequence_next: u64,
    pub fencing_token_last: u64,
    pub tasks_pending: usize,
    pub tasks_claimed: usize,
    pub tasks_completed: usize,
    pub tasks_dead: usize,
    pub claims_waiting: usize,
    /// Card vectors held, of every model (live agents' only).
    pub card_vectors: usize,
}

/// The state machine. One thread owns it; every input carries `now`.
pub struct Core {
    config: CoreConfig,
    now: Millis,
    ids: IdSource,
    registry: Registry,
    leases: LeaseTable,
    elections: ElectionTable,
    policies: PolicyTable,
    tasks: TaskQueue,
    bus: EventBus,
    timers: TimerWheel<Deadline>,
    expired: Vec<(timers::TimerKey, Deadline)>,
    sessions: sessions::Sessions,
}

impl Core {
    pub fn new(config: CoreConfig, now: Millis) -> Core {
        let mut ids = IdSource::new(config.seed);
        let hash_seed = ids.hash_seed();
        Core {
            registry: Registry::new(hash_seed),
            leases: LeaseTable::new(hash_seed),
            elections: ElectionTable::new(hash_seed),
            policies: PolicyTable::new(hash_seed),
            tasks: TaskQueue::new(hash_seed),
            bus: EventBus::new(config.event_ring_max, config.watchers_max),
            timers: TimerWheel::new(now),
            expired: Vec::new(),
            sessions: sessions::Sessions::default(),
            ids,
            now,
            config,
        }
    }

    /// The time the core last saw.
    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Applies one command at `now`, after firing every deadline due by then, so that whatever
    /// has expired by `now` counts as expired whether or not a tick came first.
    pub fn apply(&mut self, now: Millis, command: Command) -> Outcome {
        self.apply_as(now, command, None)
    }

    /// Applies `command` on behalf of `principal`, the agent token that makes the call if one
    /// does (`--auth-tokens`): a Register binds the new agent to that token, and a call that acts
    /// for an agent is refused unless the agent is bound to the same token (see `owner_check`).
    pub fn apply_as(&mut self, now: Millis, command: Command, principal: Option<TokenId>) -> Outcome {
        let _ = self.tick(now);
        let (request, command) = match command {
            Command::Once { request, command } => (Some(request), *command),
            command => (None, command),
        };
        if let Some(token) = principal {
            self.owner_check(&command, token)?;
        }
        let Some(request) = request else {
            return self.execute(command, principal);
        };
        if !matches!(command, Command::Register { .. } | Command::CreateTask { .. }) {
            let message = format!(
                "a numbered request is a Register or a CreateTask, not a {}",
                command.name()
            );
            return Err(CoreError::new(ErrorCode::InvalidArgument, message));
        }
        if let Some(created) = self.sessions.created(request) {
            return match (created, &command) {
                (sessions::Created::Agent(agent_id), Command::Register { .. }) => Ok(Reply::Registered { agent_id }),
                (sessions::Created::Task(task_id), Command::CreateTask { .. }) => self.execute(
                    Command::GetTask {
                        task_id: task_id.to_string(),
                    },
                    None,
                ),
                _ => Err(CoreError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "request {} of this client was another kind of call than this {}: a request number is \
                         used once",
                        request.seq,
                        command.name()
                    ),
                )),
            };
        }
        let outcome = self.execute(command, principal);
        let created = match &outcome {
            Ok(Reply::Registered { agent_id }) => Some(sessions::Created::Agent(*agent_id)),
            Ok(Reply::Task(task)) => Some(sessions::Created::Task(task.id)),
            _ => None,
        };
        if let Some(created) = created {
            self.sessions.remember(self.now, request, created);
        }
        outcome
    }

    /// Runs one command (its time already set, its caller's ownership checked).
    pub(super) fn execute(&mut self, command: Command, principal: Option<TokenId>) -> Outcome {
        match command {
            Command::Register {
                card,
                ttl_seconds,
                vector,
            } => self.register(*card, ttl_seconds, vector, principal),
            Command::Once { .. } => Err(CoreError::new(
                ErrorCode::InvalidArgument,
                "a numbered request inside another",
            )),
            Command::Heartbeat { agent_id } => self.heartbeat(&agent_id),
            Command::KeepAlive { items } => self.keep_alive(items, principal),
            Command::Deregister { agent_id } => self.deregister(&agent_id),
            Command::GetAgent { agent_id } => self.get_agent(&agent_id),
            Command::Find {
                query,
                tools,
                limit,
                vector,
            } => self.find(&query, vector.as_ref(), &tools, limit),
            Command::SetCardVector {
                agent_id,
                card_digest,
                vector,
            } => self.set_card_vector(&agent_id, card_digest, &vector),
            Command::CardsWithoutVector { model, after, limit } => self.cards_without_vector(&model, after, limit),
            Command::Watch { topics, from_sequence } => self.watch(&topics, from_sequence),
            Command::Unwatch { subscriber } => {
                self.bus.unwatch(subscriber);
                Ok(Reply::Done)
            }
            Command::AcquireLease {
                task_id,
                agent_id,
                ttl_seconds,
            } => self.acquire_lease(task_id, &agent_id, ttl_seconds),
            Command::RenewLease {
                task_id,
                agent_id,
                token,
                ttl_seconds,
            } => self.renew_lease(&task_id, &agent_id, token, ttl_seconds),
            Command::ReleaseLease {
                task_id,
                agent_id,
                token,
            } => self.release_lease(&task_id, &agent_id, token),
            Command::Campaign { group, agent_id } => self.campaign(group, &agent_id),
            Command::Resign { group, agent_id } => self.resign(&group, &agent_id),
            Command::WatchElection { group } => self.watch_election(group),
            Command::SetPolicy { policy } => self.set_policy(*policy),
            Command::DeletePolicy { id } => self.delete_policy(&id),
            Command::ListPolicies {
                subject_prefix,
                page_size,
                page_token,
            } => self.list_policies(&subject_prefix, page_size, &page_token),
            Command::CheckPolicy {
                subject,
                action,
                resource,
            } => self.check_policy(&subject, &action, &resource),
            Command::CreateTask {
                kind,
                input,
                required_tools,
                max_retries,
                ttl_seconds,
            } => self.create_task(kind, input, required_tools, max_retries, ttl_seconds),
            Command::ClaimTask { agent_id, wait_ms } => self.claim_task(&agent_id, wait_ms),
            Command::CancelClaim { waiter } => self.cancel_claim(waiter),
            Command::ReturnTask { task_id, token } => self.return_task(&task_id, token),
            Command::CompleteTask {
                task_id,
                agent_id,
                output,
            } => self.complete_task(&task_id, &agent_id, output),
            Command::FailTask {
                task_id,
                agent_id,
                reason,
            } => self.fail_task(&task_id, &agent_id, &reason),
            Command::GetTask { task_id } => self.get_task(&task_id),
            Command::ListTasks {
                status,
                page_size,
                page_token,
                bytes_left,
            } => {
                let bytes = bytes_left.map_or(tasks::PageBytes::Whole, tasks::PageBytes::Left);
                self.list_tasks(status, page_size, &page_token, bytes)
            }
            Command::ListLeases {
                prefix,
                page_size,
                page_token,
            } => self.list_leases(&prefix, page_size, &page_token),
            Command::ListElections { page_size, page_token } => self.list_elections(page_size, &page_token),
            Command::Overview { agents_max, leases_max } => self.overview(agents_max, leases_max),
            Command::Now => Ok(Reply::Now(self.now)),
            Command::ListAgents {
                status,
                query,
                page_size,
                page_token,
            } => self.list_agents(status, &query, page_size, &page_token),
        }
    }

    /// Fires every deadline due at or before `now`; returns how many fired (0: nothing changed,
    /// so a store need not log this tick).
    ///
    /// Deadlines are handled one group at a time, earliest first, with the core's clock set to
    /// each group's deadline: after a long pause everything happens in the order and at the
    /// instants the contract's timeline says (an agent that died at 2 s releases the lease that
    /// would have expired at 3 s; it does not let it expire), including timers that a handler
    /// arms already due (UNREACHABLE, then DEAD, in one tick). Within a group, owners rank by
    /// registration or token, so a restored core fires exactly like its original.
    pub fn tick(&mut self, now: Millis) -> usize {
        assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        let mut fired = 0;
        let mut expired = std::mem::take(&mut self.expired);
        while let Some(bound) = self.timers.next_deadline().filter(|&d| d <= now) {
            // `bound` is never later than the earliest deadline, so this fires exactly the timers
            // due at the earliest deadline, or, when `bound` was a slot's start, only cascades.
            self.timers.advance(bound, &mut expired);
            if expired.is_empty() {
                continue;
            }
            self.now = self.now.max(bound);
            fired += expired.len();
            expired.sort_by_cached_key(|(_, deadline)| self.expiry_rank(*deadline));
            for (timer, deadline) in expired.drain(..) {
                match deadline {
                    Deadline::Agent(key) => self.agent_deadline(key, timer),
                    Deadline::Lease(key) => self.lease_expired(key, timer),
                    Deadline::Claim(key) => self.claim_expired(key, timer),
                    Deadline::Task(key) => self.task_forgotten(key, timer),
                }
            }
        }
        self.expired = expired;
        self.now = now;
        fired
    }

    /// Where a due timer ranks among those firing together: by deadline, agents before leases,
    /// claims, then tasks, then by registration order, fencing token, arrival or creation.
    fn expiry_rank(&self, deadline: Deadline) -> (Millis, u8, u64) {
        match deadline {
            Deadline::Agent(key) => {
                let agent = self.registry.get(key);
                let dead_at = self.registry.dead_at.get(&key).copied();
                (
                    agent.deadline_expected(dead_at, self.config.dead_retention_ms),
                    0,
                    agent.registration,
                )
            }
            Deadline::Lease(key) => {
                let lease = self.leases.get(key);
                (lease.expires_at, 1, lease.token)
            }
            Deadline::Claim(key) => {
                let waiter = &self.tasks.waiters[key];
                (waiter.deadline, 2, waiter.id.0)
            }
            Deadline::Task(key) => {
                let task = self.tasks.get(key);
                let finished_at = task.finished_at.expect("a task with a timer has finished");
                (finished_at + self.config.task_retention_ms, 3, task.order)
            }
        }
    }

    /// The daemon restarted at `now`: pushes every
    /// agent's next liveness step and every lease's expiry to at least `now` + its ttl, so
    /// nobody is punished for the time the daemon was down (as etcd refreshes leases on a new
    /// leader). Waiting claims are dropped: their callers went with the old process. Recovery
    /// calls it once, after replay, before serving.
    pub fn restart_grace(&mut self, now: Millis) {
        assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now;
        self.grace_agents(now);
        self.grace_leases(now);
        self.drop_waiters();
    }

    /// A new cluster leader's grace at `now`: each live lease and agent whose next deadline
    /// falls within `min(its TTL, grace_ms)` of now gets that long, no more (time without a
    /// leader must neither expire them nor extend them by a whole TTL); waiting claims are
    /// dropped (their callers claim again on the new leader).
    pub fn failover_grace(&mut self, now: Millis, grace_ms: u64) {
        assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now;
        self.failover_grace_leases(now, grace_ms);
        self.failover_grace_agents(now, grace_ms);
        self.drop_waiters();
    }

    /// The earliest time at which `tick` has work to do; the driver sleeps until then.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.next_deadline()
    }

    /// Events emitted since this core was built (replay included), by topic in `Topic::ALL`
    /// order. Cheap: the driver reads it after every batch for the metrics.
    pub fn events_by_topic(&self) -> [u64; events::Topic::ALL.len()] {
        self.bus.emitted_by_topic()
    }

    /// Moves every event delivery queued since the last call into `out`.
    pub fn drain_deliveries(&mut self, out: &mut Vec<Delivery>) {
        self.bus.drain_deliveries(out);
    }

    pub fn stats(&self) -> CoreStats {
        let (alive, unreachable, dead) = self.registry.counts();
        CoreStats {
            agents_alive: alive,
            agents_unreachable: unreachable,
            agents_dead: dead,
            leases: self.leases.len(),
            groups: self.elections.len(),
            policies: self.policies.len(),
            watchers: self.bus.subscriber_count(),
            sequence_next: self.bus.sequence_next(),
            fencing_token_last: self.leases.token_last(),
            tasks_pending: self.tasks.count(TaskStatus::Pending),
            tasks_claimed: self.tasks.count(TaskStatus::Claimed),
            tasks_completed: self.tasks.count(TaskStatus::Completed),
            tasks_dead: self.tasks.count(TaskStatus::Dead),
            claims_waiting: self.tasks.waiting_claims(),
            card_vectors: self.registry.search.vectors_len(),
        }
    }

    /// Checks every cross-structure invariant; O(state). The simulator calls it after each step.
    pub fn check_invariants(&self) {
        self.timers.check_invariants();
        self.bus.check_invariants();
        self.policies.check_invariants();
        self.registry
            .check_invariants(self.now, self.config.dead_retention_ms, &self.timers);
        self.leases.check_invariants(self.now, &self.registry, &self.timers);
        self.elections.check_invariants(&self.registry);
        self.check_task_invariants();
        self.sessions.check_invariants();
    }

    /// An agent token acts only for the agents it registered: Heartbeat, Deregister and the
    /// lease calls name an agent, which must be bound to `token`. An unknown agent is refused
    /// the same way, so a token learns nothing about agents that are not its own.
    pub(super) fn owner_check(&self, command: &Command, token: TokenId) -> Result<(), CoreError> {
        let agent_id = match command {
            Command::Heartbeat { agent_id }
            | Command::Deregister { agent_id }
            | Command::AcquireLease { agent_id, .. }
            | Command::RenewLease { agent_id, .. }
            | Command::ReleaseLease { agent_id, .. } => agent_id,
            _ => return Ok(()),
        };
        let owner = self
            .registry
            .lookup(agent_id)
            .ok()
            .and_then(|key| self.registry.get(key).owner);
        if owner == Some(token) {
            return Ok(());
        }
        Err(CoreError::new(
            ErrorCode::PermissionDenied,
            format!(
                "agent {} was not registered with this agent token",
                validate::quote(agent_id)
            ),
        ))
    }

    fn emit(&mut self, topic: Topic, payload: EventPayload) {
        self.bus.emit(self.now, topic, payload);
    }

    fn watch(&mut self, topics: &[String], from_sequence: u64) -> Outcome {
        validate::topics(topics)?;
        let (subscriber, replay) = self.bus.watch(topics, from_sequence)?;
        Ok(Reply::Watching { subscriber, replay })
    }

    fn set_policy(&mut self, input: PolicyInput) -> Outcome {
        let policy = Arc::new(validate::policy(input)?);
        // The id is looked up only at the limit: below it, a new id and a replaced one both fit.
        if self.policies.len() >= self.config.policies_max && self.policies.get(&policy.id).is_none() {
            return Err(limit_reached("policies_max", self.config.policies_max));
        }
        // The table and the answer share the policy: no copy of its four strings per write.
        self.policies.upsert(Arc::clone(&policy));
        Ok(Reply::Policy(policy))
    }

    fn delete_policy(&mut self, id: &str) -> Outcome {
        match self.policies.remove(id) {
            Some(_) => Ok(Reply::Done),
            None => Err(CoreError::new(
                ErrorCode::NotFound,
                format!("policy {} not found", validate::quote(id)),
            )),
        }
    }

    fn check_policy(&self, subject: &str, action: &str, resource: &str) -> Outcome {
        validate::length("subject", subject, 0, validate::PATTERN_BYTES_MAX)?;
        validate::length("action", action, 0, validate::PATTERN_BYTES_MAX)?;
        validate::length("resource", resource, 0, validate::PATTERN_BYTES_MAX)?;
        Ok(Reply::Decision(self.policies.check(subject, action, resource)))
    }
}

/// The RESOURCE_EXHAUSTED answer for a named limit: "limit agents_max (1000000) reached".
fn limit_reached(name: &str, value: usize) -> CoreError {
    CoreError::new(
        ErrorCode::ResourceExhausted,
        crate::limits::reached_message(name, value),
    )
}

#[cfg(test)]
mod tests;
