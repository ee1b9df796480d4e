//! The task queue: tasks and their states, pending tasks indexed by required tool set, waiting
//! claimers (long-polls) in arrival order, and the claim lease that ties a CLAIMED task to its
//! holder. Lease expiry, release and the holder's death fail the task as FailTask would.
//!
//! Architecture invariant: every task is in exactly one state and indexed under exactly that one;
//! no pending task matches a waiting claimer; a CLAIMED task's lease exists, names the task and is
//! held by its claimer. A new task or a new claim scans tool-set groups, never tasks or claimers.

use std::collections::BTreeMap;
use std::sync::Arc;

use slab::Slab;

use super::events::{EventPayload, LeaseView, Topic};
use super::listing::Page;
use super::timers::TimerKey;
use super::types::{AgentId, AgentStatus, Map, Millis, TaskId, new_map};
use super::validate;
use super::{Core, CoreError, Deadline, ErrorCode, Outcome, Reply, limit_reached};

/// Where a task is in its life. FAILED is a wire value only: a failed task goes back to PENDING
/// or on to DEAD at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskStatus {
    Pending,
    Claimed,
    Completed,
    Failed,
    Dead,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Claimed => "CLAIMED",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Dead => "DEAD",
        }
    }

    fn index(self) -> usize {
        match self {
            TaskStatus::Pending => 0,
            TaskStatus::Claimed => 1,
            TaskStatus::Completed => 2,
            TaskStatus::Failed => unreachable!("no task rests in FAILED"),
            TaskStatus::Dead => 3,
        }
    }
}

/// A sorted, de-duplicated set of tool names: the key that groups pending tasks (by what they
/// require) and waiting claimers (by what their agent offers).
pub type ToolSet = Arc<[Arc<str>]>;

/// Builds the canonical tool set of `tools`.
pub fn tool_set(tools: &[String]) -> ToolSet {
    let mut set: Vec<Arc<str>> = tools.iter().map(|t| Arc::from(t.as_str())).collect();
    set.sort_unstable();
    set.dedup();
    set.into()
}

/// True when every tool of `required` is in `offered` (both sorted).
pub fn covers(offered: &[Arc<str>], required: &[Arc<str>]) -> bool {
    let mut offered = offered.iter();
    required.iter().all(|tool| offered.any(|o| o == tool))
}

/// The earliest entry among the heads of the groups whose tool set `matches`: one look at the
/// head of each group, never at the entries behind it.
fn earliest_head<K: Ord + Copy>(
    groups: &Map<ToolSet, BTreeMap<K, usize>>,
    matches: impl Fn(&[Arc<str>]) -> bool,
) -> Option<usize> {
    groups
        .iter()
        .filter(|(tools, _)| matches(tools))
        .filter_map(|(_, group)| group.first_key_value())
        .min_by_key(|(rank, _)| **rank)
        .map(|(_, &key)| key)
}

/// A task as it was when the answer or event was made. Events carry it without the input and
/// output bytes (GetTask has them), so a 4 MiB input is not copied to every subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub id: TaskId,
    pub kind: Arc<str>,
    pub input: Arc<[u8]>,
    pub output: Arc<[u8]>,
    pub status: TaskStatus,
    pub required_tools: ToolSet,
    pub max_retries: u32,
    pub retry_count: u32,
    pub claimed_by: Option<AgentId>,
    pub failure_reason: Arc<str>,
    pub created_at: Millis,
    pub claimed_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub ttl_ms: u64,
}

impl TaskView {
    /// The same task without its input and output bytes, for events.
    pub fn without_bytes(&self) -> TaskView {
        TaskView {
            input: Arc::from(&[][..]),
            output: Arc::from(&[][..]),
            ..self.clone()
        }
    }
}

/// The input and output bytes one ListTasks answer may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageBytes {
    /// A whole page: `validate::PAGE_BYTES_MAX` past its first task (always at least one).
    Whole,
    /// What a gathered page's earlier slices left: perhaps not even one task's worth.
    Left(u64),
}

/// A long-poll claim's identity; never reused within one core's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterId(pub u64);

pub struct Task {
    pub view: TaskView,
    pub id_text: Arc<str>,
    /// Creation rank: "oldest" means the smallest.
    pub order: u64,
    /// The claim lease, while CLAIMED.
    pub lease: Option<usize>,
    /// The claimer's registry key, while CLAIMED.
    pub holder: Option<usize>,
    /// When a COMPLETED or DEAD task finished, and its forgetting timer.
    pub finished_at: Option<Millis>,
    pub timer: Option<TimerKey>,
}

impl Task {
    fn bytes(&self) -> usize {
        self.view.input.len() + self.view.output.len()
    }
}

pub struct Waiter {
    pub id: WaiterId,
    pub agent: usize,
    pub agent_id: AgentId,
    pub tools: ToolSet,
    pub deadline: Millis,
    pub timer: TimerKey,
}

pub struct TaskQueue {
    pub(super) tasks: Slab<Task>,
    pub(super) by_id: Map<TaskId, usize>,
    /// Every task by creation order, and per resting status.
    pub(super) by_order: BTreeMap<u64, usize>,
    pub(super) by_status: [BTreeMap<u64, usize>; 4],
    /// PENDING tasks grouped by required tool set, oldest first; no group is empty.
    pub(super) pending: Map<ToolSet, BTreeMap<u64, usize>>,
    pub(super) waiters: Slab<Waiter>,
    pub(super) waiter_keys: Map<WaiterId, usize>,
    /// Waiting claimers grouped by their agent's tool set, in arrival order; no group is empty.
    pub(super) waiting: Map<ToolSet, BTreeMap<WaiterId, usize>>,
    pub(super) order_next: u64,
    pub(super) waiter_next: u64,
    /// Input and output bytes held by all tasks.
    pub(super) bytes: usize,
    /// Answers to waiting claimers, for the driver to hand over.
    pub(super) answers: Vec<(WaiterId, Outcome)>,
}

impl TaskQueue {
    pub fn new(hash_seed: u64) -> Self {
        TaskQueue {
            tasks: Slab::new(),
            by_id: new_map(hash_seed),
            by_order: BTreeMap::new(),
            by_status: Default::default(),
            pending: new_map(hash_seed),
            waiters: Slab::new(),
            waiter_keys: new_map(hash_seed),
            waiting: new_map(hash_seed),
            order_next: 1,
            waiter_next: 1,
            bytes: 0,
            answers: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// How many tasks rest in `status`.
    pub fn count(&self, status: TaskStatus) -> usize {
        match status {
            TaskStatus::Failed => 0,
            status => self.by_status[status.index()].len(),
        }
    }

    pub fn waiting_claims(&self) -> usize {
        self.waiters.len()
    }

    pub fn get(&self, key: usize) -> &Task {
        &self.tasks[key]
    }

    /// Every task in creation order.
    pub fn iter(&self) -> impl Iterator<Item = &Task> {
        self.by_order.values().map(|&key| &self.tasks[key])
    }

    /// Every waiting claim in arrival order.
    pub fn waiters_in_order(&self) -> Vec<&Waiter> {
        let mut waiters: Vec<&Waiter> = self.waiters.iter().map(|(_, w)| w).collect();
        waiters.sort_unstable_by_key(|w| w.id);
        waiters
    }

    fn lookup(&self, task_id: &str) -> Result<usize, CoreError> {
        TaskId::parse(task_id)
            .and_then(|id| self.by_id.get(&id).copied())
            .ok_or_else(|| {
                CoreError::new(
                    ErrorCode::NotFound,
                    format!("task {} not found", validate::quote(task_id)),
                )
            })
    }

    /// The task a lease key names, if it is a task's id.
    pub(super) fn by_key(&self, key: &str) -> Option<usize> {
        TaskId::parse(key).and_then(|id| self.by_id.get(&id).copied())
    }

    /// Files a task under `status` (and, when PENDING, under its tool-set group).
    pub(super) fn file(&mut self, key: usize, status: TaskStatus) {
        let task = &mut self.tasks[key];
        task.view.status = status;
        self.by_status[status.index()].insert(task.order, key);
        if status == TaskStatus::Pending {
            self.pending
                .entry(Arc::clone(&task.view.required_tools))
                .or_default()
                .insert(task.order, key);
        }
    }

    /// Takes a task out of its current status's indexes.
    fn unfile(&mut self, key: usize) {
        let task = &self.tasks[key];
        let removed = self.by_status[task.view.status.index()].remove(&task.order);
        assert_eq!(removed, Some(key), "task {} not filed under its status", task.id_text);
        if task.view.status == TaskStatus::Pending {
            let group = self
                .pending
                .get_mut(&task.view.required_tools)
                .expect("a pending task's group exists");
            group.remove(&task.order);
            if group.is_empty() {
                self.pending.remove(&task.view.required_tools);
            }
        }
    }

    /// The oldest pending task that an agent offering `tools` can take.
    fn oldest_claimable(&self, tools: &[Arc<str>]) -> Option<usize> {
        earliest_head(&self.pending, |required| covers(tools, required))
    }

    /// The earliest waiting claimer whose agent can take a task requiring `required`.
    fn first_waiter_for(&self, required: &[Arc<str>]) -> Option<usize> {
        earliest_head(&self.waiting, |offered| covers(offered, required))
    }

    fn remove_waiter(&mut self, key: usize) -> Waiter {
        let waiter = self.waiters.remove(key);
        self.waiter_keys.remove(&waiter.id);
        let group = self.waiting.get_mut(&waiter.tools).expect("a waiter's group exists");
        group.remove(&waiter.id);
        if group.is_empty() {
            self.waiting.remove(&waiter.tools);
        }
        waiter
    }

    pub(super) fn add_waiter(&mut self, waiter: Waiter) -> usize {
        let id = waiter.id;
        let tools = Arc::clone(&waiter.tools);
        let key = self.waiters.insert(waiter);
        self.waiter_keys.insert(id, key);
        self.waiting.entry(tools).or_default().insert(id, key);
        key
    }

    /// Lists tasks in creation order from creation rank `from` on, `status` only when given: a
    /// range read of that status's ordered index. The page's `next` is the rank it stopped at.
    pub(super) fn list(&self, status: Option<TaskStatus>, from: u64, limit: usize, bytes: PageBytes) -> Page<TaskView> {
        let mut page = Page::new();
        let index = match status {
            None => &self.by_order,
            Some(TaskStatus::Failed) => return page,
            Some(status) => &self.by_status[status.index()],
        };
        // A page stays small enough for a client's default 4 MiB message limit, yet a whole page
        // always holds at least one task.
        let (allowance, at_least_one) = match bytes {
            PageBytes::Whole => (validate::PAGE_BYTES_MAX, true),
            PageBytes::Left(left) => (usize::try_from(left).unwrap_or(usize::MAX), false),
        };
        let mut held = 0;
        for (&order, &key) in index.range(from..) {
            page.examined += 1;
            let task = &self.tasks[key];
            let fits = held + task.bytes() <= allowance || (page.items.is_empty() && at_least_one);
            if page.items.len() == limit || !fits {
                page.next = Some(order.to_string());
                break;
            }
            held += task.bytes();
            page.items.push(task.view.clone());
        }
        debug_assert!(page.examined <= limit + 1);
        page
    }

    pub fn check_invariants(&self) {
        assert_eq!(self.by_id.len(), self.tasks.len(), "task id index size");
        assert_eq!(self.by_order.len(), self.tasks.len(), "task order index size");
        let filed: usize = self.by_status.iter().map(BTreeMap::len).sum();
        assert_eq!(filed, self.tasks.len(), "every task rests in exactly one status");
        let mut bytes = 0;
        for (key, task) in &self.tasks {
            bytes += task.bytes();
            assert_eq!(
                self.by_id.get(&task.view.id),
                Some(&key),
                "task {} id index",
                task.id_text
            );
            assert_eq!(
                self.by_order.get(&task.order),
                Some(&key),
                "task {} order",
                task.id_text
            );
            let status = task.view.status;
            assert_eq!(
                self.by_status[status.index()].get(&task.order),
                Some(&key),
                "task {} not filed under {}",
                task.id_text,
                status.as_str()
            );
            let claimed = status == TaskStatus::Claimed;
            assert_eq!(
                task.lease.is_some(),
                claimed,
                "task {} lease while {status:?}",
                task.id_text
            );
            assert_eq!(
                task.holder.is_some(),
                claimed,
                "task {} holder while {status:?}",
                task.id_text
            );
            // The claimer stays on record once the task is COMPLETED or DEAD (who finished it).
            if claimed {
                assert!(task.view.claimed_by.is_some(), "task {} claimed_by", task.id_text);
            }
            if status == TaskStatus::Pending {
                assert!(
                    task.view.claimed_by.is_none(),
                    "pending task {} names a claimer",
                    task.id_text
                );
            }
            let finished = matches!(status, TaskStatus::Completed | TaskStatus::Dead);
            assert_eq!(task.timer.is_some(), finished, "task {} retention timer", task.id_text);
            assert!(
                task.view.retry_count <= task.view.max_retries.saturating_add(1),
                "task {} retried past its limit",
                task.id_text
            );
            if status == TaskStatus::Dead {
                assert!(
                    task.view.retry_count > task.view.max_retries,
                    "task {} DEAD early",
                    task.id_text
                );
            }
            if status == TaskStatus::Pending {
                let group = self.pending.get(&task.view.required_tools);
                assert_eq!(
                    group.and_then(|g| g.get(&task.order)),
                    Some(&key),
                    "pending task {} not in its group",
                    task.id_text
                );
            }
        }
        assert_eq!(bytes, self.bytes, "task bytes accounting");
        let grouped: usize = self.pending.values().map(BTreeMap::len).sum();
        assert_eq!(grouped, self.count(TaskStatus::Pending), "pending groups size");
        assert!(
            self.pending.values().all(|g| !g.is_empty()),
            "an empty pending group is kept"
        );
        let waiting: usize = self.waiting.values().map(BTreeMap::len).sum();
        assert_eq!(waiting, self.waiters.len(), "waiting groups size");
        assert_eq!(self.waiter_keys.len(), self.waiters.len(), "waiter id index size");
        for (offered, group) in &self.waiting {
            assert!(!group.is_empty(), "an empty waiting group is kept");
            for required in self.pending.keys() {
                assert!(
                    !covers(offered, required),
                    "a waiting claimer could take a pending task"
                );
            }
        }
    }
}

impl Core {
    pub(super) fn create_task(
        &mut self,
        kind: String,
        input: Vec<u8>,
        required_tools: Vec<String>,
        max_retries: u32,
        ttl_seconds: u32,
    ) -> Outcome {
        validate::length("type", &kind, 1, validate::TASK_TYPE_BYTES_MAX)?;
        validate::payload("input", &input)?;
        validate::tools("required_tools", &required_tools)?;
        let ttl_ms = validate::ttl_ms(ttl_seconds, validate::TASK_TTL_SECONDS_DEFAULT)?;
        if self.tasks.len() >= self.config.tasks_max {
            return Err(limit_reached("tasks_max", self.config.tasks_max));
        }
        self.task_bytes_fit(input.len())?;
        // A task's id doubles as its claim lease's key: never one a lease already uses.
        let id = loop {
            let id = self.ids.next_id();
            if !self.tasks.by_id.contains_key(&id) && !self.leases.by_task.contains_key(id.to_string().as_str()) {
                break id;
            }
        };
        let order = self.tasks.order_next;
        self.tasks.order_next += 1;
        let view = TaskView {
            id,
            kind: kind.into(),
            input: input.into(),
            output: Arc::from(&[][..]),
            status: TaskStatus::Pending,
            required_tools: tool_set(&required_tools),
            max_retries,
            retry_count: 0,
            claimed_by: None,
            failure_reason: Arc::from(""),
            created_at: self.now,
            claimed_at: None,
            completed_at: None,
            ttl_ms,
        };
        let task = Task {
            id_text: id.to_string().into(),
            view,
            order,
            lease: None,
            holder: None,
            finished_at: None,
            timer: None,
        };
        self.tasks.bytes += task.bytes();
        let key = self.tasks.tasks.insert(task);
        self.tasks.by_id.insert(id, key);
        self.tasks.by_order.insert(order, key);
        self.tasks.file(key, TaskStatus::Pending);
        let view = self.tasks.tasks[key].view.clone();
        self.emit(Topic::TaskCreated, EventPayload::Task(view.without_bytes()));
        self.offer(key);
        let view = self.tasks.tasks[key].view.clone();
        Ok(Reply::Task(Box::new(view)))
    }

    /// A claim: the oldest claimable pending task now, or (with `wait_ms` > 0) a place in line
    /// until one appears or the wait runs out.
    pub(super) fn claim_task(&mut self, agent_id: &str, wait_ms: u64) -> Outcome {
        let agent = self.registry.lookup_live(agent_id)?;
        let status = self.registry.get(agent).status;
        if status != AgentStatus::Alive {
            return Err(CoreError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "agent {} is {status:?}; only an ALIVE agent may claim (heartbeat first)",
                    validate::quote(agent_id)
                ),
            ));
        }
        let tools = tool_set(&self.registry.get(agent).card.tools);
        if let Some(task) = self.tasks.oldest_claimable(&tools) {
            let (task, lease) = self.grant_claim(task, agent)?;
            return Ok(Reply::Claimed {
                task: Box::new(task),
                lease,
            });
        }
        if wait_ms == 0 {
            return Ok(Reply::NoTask);
        }
        if self.tasks.waiters.len() >= self.config.waiters_max {
            return Err(limit_reached("waiters_max", self.config.waiters_max));
        }
        let id = WaiterId(self.tasks.waiter_next);
        self.tasks.waiter_next += 1;
        let deadline = self.now.saturating_add(wait_ms);
        let key = self.tasks.waiters.vacant_key();
        let waiter = Waiter {
            id,
            agent,
            agent_id: self.registry.get(agent).id,
            tools,
            deadline,
            timer: self.timers.insert(deadline, Deadline::Claim(key)),
        };
        let added = self.tasks.add_waiter(waiter);
        debug_assert_eq!(added, key);
        Ok(Reply::ClaimWaiting { waiter: id })
    }

    /// The client behind a waiting claim is gone. Not an error if the claim was answered already.
    pub(super) fn cancel_claim(&mut self, waiter: WaiterId) -> Outcome {
        if let Some(&key) = self.tasks.waiter_keys.get(&waiter) {
            let waiter = self.tasks.remove_waiter(key);
            self.timers.cancel(waiter.timer);
        }
        Ok(Reply::Done)
    }

    /// A waiting claim's time ran out: it is answered with no task.
    pub(super) fn claim_expired(&mut self, key: usize, timer: TimerKey) {
        if self.tasks.waiters.get(key).is_none_or(|w| w.timer != timer) {
            return;
        }
        let waiter = self.tasks.remove_waiter(key);
        self.tasks.answers.push((waiter.id, Ok(Reply::NoTask)));
    }

    /// A claim's reply could not be delivered: the task goes back to PENDING, no retry counted.
    pub(super) fn return_task(&mut self, task_id: &str, token: u64) -> Outcome {
        let key = self.tasks.lookup(task_id)?;
        let task = &self.tasks.tasks[key];
        let lease = task.lease.map(|l| self.leases.get(l));
        if task.view.status != TaskStatus::Claimed || lease.is_none_or(|l| l.token != token) {
            return Err(CoreError::new(
                ErrorCode::FailedPrecondition,
                format!("task {} is not claimed under token {token}", validate::quote(task_id)),
            ));
        }
        self.drop_claim_lease(key);
        self.requeue(key);
        Ok(Reply::Done)
    }

    pub(super) fn complete_task(&mut self, task_id: &str, agent_id: &str, output: Vec<u8>) -> Outcome {
        validate::payload("output", &output)?;
        let key = self.claimed_by(task_id, agent_id)?;
        self.task_bytes_fit(output.len())?;
        self.drop_claim_lease(key);
        let now = self.now;
        self.tasks.unfile(key);
        let task = &mut self.tasks.tasks[key];
        self.tasks.bytes += output.len();
        task.view.output = output.into();
        task.view.completed_at = Some(now);
        task.holder = None;
        self.tasks.file(key, TaskStatus::Completed);
        self.finish(key);
        let view = self.tasks.tasks[key].view.without_bytes();
        self.emit(Topic::TaskCompleted, EventPayload::Task(view));
        Ok(Reply::Done)
    }

    pub(super) fn fail_task(&mut self, task_id: &str, agent_id: &str, reason: &str) -> Outcome {
        validate::length("reason", reason, 0, validate::FAILURE_REASON_BYTES_MAX)?;
        let key = self.claimed_by(task_id, agent_id)?;
        self.drop_claim_lease(key);
        self.task_failed(key, reason);
        Ok(Reply::Done)
    }

    pub(super) fn get_task(&self, task_id: &str) -> Outcome {
        let key = self.tasks.lookup(task_id)?;
        Ok(Reply::Task(Box::new(self.tasks.tasks[key].view.clone())))
    }

    /// ListTasks: in creation order from the page token, one status or all, at most 1000 tasks
    /// and the input and output bytes `bytes` allows.
    pub(super) fn list_tasks(
        &self,
        status: Option<TaskStatus>,
        page_size: u32,
        page_token: &str,
        bytes: PageBytes,
    ) -> Outcome {
        let after = if page_token.is_empty() {
            0
        } else {
            page_token.parse::<u64>().map_err(|_| {
                CoreError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "page_token {} is not one this daemon gave out",
                        validate::quote(page_token)
                    ),
                )
            })?
        };
        let limit = validate::page_size(page_size).min(super::listing::PAGE_SIZE_MAX);
        let page = self.tasks.list(status, after, limit, bytes);
        Ok(Reply::Tasks {
            next_page_token: page.token(),
            tasks: page.items,
        })
    }

    /// A finished task's retention ran out: it is forgotten.
    pub(super) fn task_forgotten(&mut self, key: usize, timer: TimerKey) {
        let task = &self.tasks.tasks[key];
        assert_eq!(
            task.timer,
            Some(timer),
            "task {} fired a timer it does not own",
            task.id_text
        );
        self.tasks.unfile(key);
        let task = self.tasks.tasks.remove(key);
        self.tasks.by_id.remove(&task.view.id);
        self.tasks.by_order.remove(&task.order);
        self.tasks.bytes -= task.bytes();
    }

    /// The claim lease of a CLAIMED task ended without the task finishing (expired, released by
    /// its holder, or its holder died): the task fails with `reason`.
    pub(super) fn claim_lease_ended(&mut self, key: usize, reason: &str) {
        let task = &mut self.tasks.tasks[key];
        debug_assert_eq!(task.view.status, TaskStatus::Claimed);
        task.lease = None;
        self.task_failed(key, reason);
    }

    /// After a restart: the clients behind waiting claims are gone; nobody is answered.
    pub(super) fn drop_waiters(&mut self) {
        let keys: Vec<usize> = self.tasks.waiters.iter().map(|(key, _)| key).collect();
        for key in keys {
            let waiter = self.tasks.remove_waiter(key);
            self.timers.cancel(waiter.timer);
        }
    }

    /// Answers `agent`'s waiting claims FAILED_PRECONDITION (`why` it may no longer claim) and
    /// takes them out of the line.
    pub(super) fn drop_waiters_of(&mut self, agent: usize, why: &str) {
        let keys: Vec<usize> = self
            .tasks
            .waiters
            .iter()
            .filter(|(_, w)| w.agent == agent)
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            let waiter = self.tasks.remove_waiter(key);
            self.timers.cancel(waiter.timer);
            let message = format!("agent \"{}\" {why} while its claim waited", waiter.agent_id);
            let error = CoreError::new(ErrorCode::FailedPrecondition, message);
            self.tasks.answers.push((waiter.id, Err(error)));
        }
    }

    /// Moves every answer to a waiting claim made since the last call into `out`.
    pub fn drain_claim_answers(&mut self, out: &mut Vec<(WaiterId, Outcome)>) {
        out.append(&mut self.tasks.answers);
    }

    fn claimed_by(&self, task_id: &str, agent_id: &str) -> Result<usize, CoreError> {
        let key = self.tasks.lookup(task_id)?;
        let task = &self.tasks.tasks[key];
        let agent = AgentId::parse(agent_id);
        if task.view.status != TaskStatus::Claimed || agent.is_none() || task.view.claimed_by != agent {
            let state = match task.view.claimed_by {
                Some(holder) if task.view.status == TaskStatus::Claimed => format!("claimed by agent \"{holder}\""),
                _ => task.view.status.as_str().to_string(),
            };
            return Err(CoreError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "task {} is {state}, not claimed by agent {}",
                    validate::quote(task_id),
                    validate::quote(agent_id)
                ),
            ));
        }
        Ok(key)
    }

    /// RESOURCE_EXHAUSTED when `adding` more input or output bytes would pass `task_bytes_max`.
    fn task_bytes_fit(&self, adding: usize) -> Result<(), CoreError> {
        if self.tasks.bytes + adding <= self.config.task_bytes_max {
            return Ok(());
        }
        Err(CoreError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "{}: tasks hold {} bytes of input and output",
                crate::limits::reached_message("task_bytes_max", self.config.task_bytes_max),
                self.tasks.bytes
            ),
        ))
    }

    /// Hands the pending task `key` to `agent`: a lease on its id, CLAIMED, `task.claimed`.
    fn grant_claim(&mut self, key: usize, agent: usize) -> Result<(TaskView, LeaseView), CoreError> {
        let task = &self.tasks.tasks[key];
        debug_assert_eq!(task.view.status, TaskStatus::Pending);
        let (id_text, ttl_ms) = (Arc::clone(&task.id_text), task.view.ttl_ms);
        let (lease_key, lease) = self.grant_lease(id_text, agent, ttl_ms, Some(key))?;
        let now = self.now;
        let holder_id = self.registry.get(agent).id;
        self.tasks.unfile(key);
        let task = &mut self.tasks.tasks[key];
        task.lease = Some(lease_key);
        task.holder = Some(agent);
        task.view.claimed_by = Some(holder_id);
        task.view.claimed_at = Some(now);
        self.tasks.file(key, TaskStatus::Claimed);
        let view = self.tasks.tasks[key].view.clone();
        self.emit(Topic::TaskClaimed, EventPayload::Task(view.without_bytes()));
        Ok((view, lease))
    }

    /// Offers the newly pending task `key` to waiting claimers, earliest first. A claimer whose
    /// agent is no longer ALIVE is answered with the reason and passed over.
    fn offer(&mut self, key: usize) {
        let required = Arc::clone(&self.tasks.tasks[key].view.required_tools);
        while let Some(waiter_key) = self.tasks.first_waiter_for(&required) {
            let waiter = self.tasks.remove_waiter(waiter_key);
            self.timers.cancel(waiter.timer);
            let agent = self.registry.by_id.get(&waiter.agent_id).copied();
            let status = agent.map(|a| self.registry.get(a).status);
            let Some(agent) = agent.filter(|_| status == Some(AgentStatus::Alive)) else {
                let message = format!(
                    "agent \"{}\" stopped being ALIVE while its claim waited",
                    waiter.agent_id
                );
                let error = CoreError::new(ErrorCode::FailedPrecondition, message);
                self.tasks.answers.push((waiter.id, Err(error)));
                continue;
            };
            debug_assert_eq!(agent, waiter.agent);
            let answer = self.grant_claim(key, agent).map(|(task, lease)| Reply::Claimed {
                task: Box::new(task),
                lease,
            });
            let claimed = answer.is_ok();
            self.tasks.answers.push((waiter.id, answer));
            if claimed {
                return;
            }
        }
    }

    /// Removes a CLAIMED task's lease, as a release by its holder would (`lease.released`).
    fn drop_claim_lease(&mut self, key: usize) {
        let lease_key = self.tasks.tasks[key].lease.take().expect("a claimed task has a lease");
        self.remove_lease(lease_key);
    }

    /// FailTask's effect (the lease already gone): one more retry, then PENDING again or DEAD.
    fn task_failed(&mut self, key: usize, reason: &str) {
        let task = &mut self.tasks.tasks[key];
        task.view.retry_count += 1;
        task.view.failure_reason = reason.into();
        if task.view.retry_count <= task.view.max_retries {
            self.requeue(key);
            return;
        }
        self.tasks.unfile(key);
        self.tasks.tasks[key].holder = None;
        self.tasks.file(key, TaskStatus::Dead);
        self.finish(key);
        let view = self.tasks.tasks[key].view.without_bytes();
        self.emit(Topic::TaskDead, EventPayload::Task(view));
    }

    /// Back to PENDING (after a failure, or after an undeliverable claim: then `failure_reason`
    /// and `retry_count` stay as they were), with `task.failed` so that watchers see the task
    /// leave its claimer, then offered to waiting claimers.
    fn requeue(&mut self, key: usize) {
        self.tasks.unfile(key);
        let task = &mut self.tasks.tasks[key];
        task.view.claimed_by = None;
        task.view.claimed_at = None;
        task.holder = None;
        self.tasks.file(key, TaskStatus::Pending);
        let view = self.tasks.tasks[key].view.without_bytes();
        self.emit(Topic::TaskFailed, EventPayload::Task(view));
        self.offer(key);
    }

    /// A task reached COMPLETED or DEAD: it is kept for the retention, then forgotten.
    fn finish(&mut self, key: usize) {
        let forget_at = self.now.saturating_add(self.config.task_retention_ms);
        let timer = self.timers.insert(forget_at, Deadline::Task(key));
        let task = &mut self.tasks.tasks[key];
        task.finished_at = Some(self.now);
        task.timer = Some(timer);
    }

    /// Cross-structure checks between tasks, leases and agents.
    pub(super) fn check_task_invariants(&self) {
        self.tasks.check_invariants();
        for (key, task) in &self.tasks.tasks {
            if let (Some(lease_key), Some(holder)) = (task.lease, task.holder) {
                let lease = self.leases.get(lease_key);
                assert_eq!(lease.task, Some(key), "task {} lease does not name it", task.id_text);
                assert_eq!(*lease.task_id, *task.id_text, "task {} lease key", task.id_text);
                assert_eq!(lease.holder, holder, "task {} lease holder", task.id_text);
                assert_eq!(
                    Some(lease.holder_id),
                    task.view.claimed_by,
                    "task {} claimer",
                    task.id_text
                );
                assert_ne!(
                    self.registry.get(holder).status,
                    AgentStatus::Dead,
                    "DEAD agent owns claimed task {}",
                    task.id_text
                );
            }
            if let Some(timer) = task.timer {
                assert_eq!(
                    self.timers.get(timer),
                    &Deadline::Task(key),
                    "task {} timer owner",
                    task.id_text
                );
            }
        }
        for lease in self.leases.iter() {
            if let Some(key) = lease.task {
                assert_eq!(
                    self.tasks
                        .tasks
                        .get(key)
                        .and_then(|t| t.lease)
                        .map(|l| *self.leases.get(l).task_id == *lease.task_id),
                    Some(true),
                    "lease {:?} names a task that does not hold it",
                    lease.task_id
                );
            }
        }
        for (key, waiter) in &self.tasks.waiters {
            assert_eq!(
                self.timers.get(waiter.timer),
                &Deadline::Claim(key),
                "waiter {:?} timer",
                waiter.id
            );
            assert_eq!(
                self.timers.deadline(waiter.timer),
                waiter.deadline,
                "waiter {:?} deadline",
                waiter.id
            );
        }
    }
}
