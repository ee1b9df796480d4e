//! The named invariants and the checks behind them: properties of single replies (Find,
//! CheckPolicy), the state after every step (leases, liveness, elections, tasks), and agreement
//! with the reference model.
//!
//! Architecture invariant: checks only read (the core through its inspection views, the model,
//! the runner's bookkeeping); a check never changes what the run does next.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use agentkeeper::core::events::LeaseView;
use agentkeeper::core::snapshot::CoreSnapshot;
use agentkeeper::core::tasks::{TaskStatus, TaskView};
use agentkeeper::core::types::AgentStatus;
use agentkeeper::core::{Command, Event, Outcome, Reply};

use crate::model::{Expected, decide};
use crate::runner::Runner;

pub mod invariant {
    pub const ONE_HOLDER_PER_KEY: &str = "lease.one_holder_per_key";
    pub const FENCING_TOKENS_INCREASE: &str = "lease.fencing_tokens_strictly_increase";
    pub const STATUS_MATCHES_HEARTBEAT: &str = "agent.status_matches_heartbeat_and_ttl";
    pub const DEAD_HOLDS_NOTHING: &str = "agent.dead_holds_no_lease_leads_no_group_stands_in_no_fifo";
    pub const TERMS_NEVER_DECREASE: &str = "election.terms_never_decrease";
    pub const LEADER_IS_LIVE_CANDIDATE: &str = "election.leader_is_live_head_candidate";
    pub const SUBSCRIBER_STREAM_EXACT: &str = "watch.subscriber_gets_exactly_its_matching_events";
    pub const CHECK_POLICY_BRUTE_FORCE: &str = "policy.check_equals_brute_force";
    pub const FIND_ALIVE_WITH_TOOLS: &str = "find.only_alive_agents_with_every_tool";
    pub const TASK_ONE_STATE: &str = "task.one_state";
    pub const TASK_NONE_LOST: &str = "task.none_lost";
    pub const TASK_DEAD_AGENT_OWNS_NO_CLAIM: &str = "task.dead_agent_owns_no_claim";
    pub const TASK_CLAIMED_HOLDER_ALIVE_WITH_LEASE: &str = "task.claimed_holder_alive_with_lease";
    pub const CORE_CHECK_INVARIANTS: &str = "core.check_invariants";
    pub const CORE_PANIC: &str = "core.no_panic";
    pub const MODEL_REPLY: &str = "model.reply_agrees";
    pub const MODEL_EVENTS: &str = "model.events_agree";
    pub const MODEL_STATE: &str = "model.state_agrees";
    pub const RECOVERY_STATE_MATCHES: &str = "recovery.state_matches";
    pub const RECOVERY_TORN_TAIL_CUT: &str = "recovery.torn_tail_cut";
    pub const RELEASED_ONLY_WHEN_DURABLE: &str = "durability.released_only_when_durable";

    pub const ALL: [&str; 21] = [
        ONE_HOLDER_PER_KEY,
        FENCING_TOKENS_INCREASE,
        STATUS_MATCHES_HEARTBEAT,
        DEAD_HOLDS_NOTHING,
        TERMS_NEVER_DECREASE,
        LEADER_IS_LIVE_CANDIDATE,
        SUBSCRIBER_STREAM_EXACT,
        CHECK_POLICY_BRUTE_FORCE,
        FIND_ALIVE_WITH_TOOLS,
        TASK_ONE_STATE,
        TASK_NONE_LOST,
        TASK_DEAD_AGENT_OWNS_NO_CLAIM,
        TASK_CLAIMED_HOLDER_ALIVE_WITH_LEASE,
        CORE_CHECK_INVARIANTS,
        CORE_PANIC,
        MODEL_REPLY,
        MODEL_EVENTS,
        MODEL_STATE,
        RECOVERY_STATE_MATCHES,
        RECOVERY_TORN_TAIL_CUT,
        RELEASED_ONLY_WHEN_DURABLE,
    ];
}

/// A broken invariant: where, which, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub step: usize,
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} invariant {}: {}", self.step, self.invariant, self.detail)
    }
}

pub(crate) type Checked<T = ()> = Result<T, (&'static str, String)>;

pub(crate) fn fail<T>(invariant: &'static str, detail: String) -> Checked<T> {
    Err((invariant, detail))
}

/// Debug text cut to a readable length for a failure message.
pub(crate) fn brief(value: &impl std::fmt::Debug) -> String {
    const BRIEF_CHARS_MAX: usize = 1200;
    let text = format!("{value:?}");
    if text.chars().count() <= BRIEF_CHARS_MAX {
        return text;
    }
    let head: String = text.chars().take(BRIEF_CHARS_MAX).collect();
    format!("{head}…")
}

impl Runner {
    /// Properties of one reply that need no model: Find's filter and order, CheckPolicy's answer.
    pub(crate) fn check_reply_properties(&self, command: &Command, outcome: &Outcome) -> Checked {
        match (command, outcome) {
            (Command::Find { query, tools, .. }, Ok(Reply::Agents(found))) => {
                let agents = self.core().agents();
                let mut previous: Option<usize> = None;
                let mut seen = BTreeSet::new();
                for view in found {
                    let Some(position) = agents.iter().position(|a| a.agent_id == view.agent_id) else {
                        return fail(
                            invariant::FIND_ALIVE_WITH_TOOLS,
                            format!("found unknown agent {}", view.agent_id),
                        );
                    };
                    let agent = &agents[position];
                    if agent.status != AgentStatus::Alive || !tools.iter().all(|t| agent.card.tools.contains(t)) {
                        return fail(
                            invariant::FIND_ALIVE_WITH_TOOLS,
                            format!(
                                "found {} ({:?}, tools {:?}) for tools {tools:?}",
                                view.agent_id, agent.status, agent.card.tools
                            ),
                        );
                    }
                    if !seen.insert(view.agent_id) {
                        return fail(
                            invariant::FIND_ALIVE_WITH_TOOLS,
                            format!("found {} twice", view.agent_id),
                        );
                    }
                    if query.is_empty() && previous.is_some_and(|p| p >= position) {
                        return fail(
                            invariant::FIND_ALIVE_WITH_TOOLS,
                            format!("empty query answered out of registration order: {}", view.agent_id),
                        );
                    }
                    previous = Some(position);
                }
                Ok(())
            }
            (
                Command::CheckPolicy {
                    subject,
                    action,
                    resource,
                },
                Ok(Reply::Decision(decision)),
            ) => {
                let expected = decide(&self.core().policies(), subject, action, resource);
                if *decision != expected {
                    return fail(
                        invariant::CHECK_POLICY_BRUTE_FORCE,
                        format!(
                            "check({subject:?}, {action:?}, {resource:?}) = {decision:?}, brute force says {expected:?}"
                        ),
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A reply against the model's (errors by class; a Find with a query by set).
    pub(crate) fn compare_reply(&self, command: &Command, outcome: &Outcome, expected: &Expected) -> Checked {
        let agrees = match (outcome, expected) {
            (Err(error), Err(code)) => error.code == *code && !error.message.is_empty(),
            (Ok(Reply::Agents(found)), Ok(Reply::Agents(_))) if matches!(command, Command::Find { query, .. } if !query.is_empty()) =>
            {
                let Command::Find { tools, limit, .. } = command else {
                    unreachable!("matched a Find above")
                };
                self.ranked_find_agrees(found, tools, *limit)
            }
            (Ok(Reply::KeepAlive(got)), Ok(Reply::KeepAlive(want))) => {
                got.len() == want.len()
                    && got.iter().zip(want).all(|(got, want)| match (got, want) {
                        (Err(error), Err(expected)) => error.code == expected.code && !error.message.is_empty(),
                        (got, want) => got == want,
                    })
            }
            (Ok(got), Ok(want)) => got == want,
            _ => false,
        };
        if agrees {
            return Ok(());
        }
        fail(
            invariant::MODEL_REPLY,
            format!(
                "{} answered {}, the model expects {}",
                command.name(),
                brief(outcome),
                brief(expected)
            ),
        )
    }

    /// A Find with a query ranks every ALIVE agent with the tools: the core's answer must be that
    /// set when it fits the limit, else `limit` distinct members of it.
    fn ranked_find_agrees(&self, found: &[agentkeeper::core::AgentView], tools: &[String], limit: u32) -> bool {
        let limit = match limit {
            0 => 10,
            n => n.min(1000),
        } as usize;
        let candidates = self.model.find_candidates(tools);
        let expected_len = candidates.len().min(limit);
        found.len() == expected_len && found.iter().all(|view| candidates.contains(view))
    }

    /// The named state invariants, then the model's state, after every step.
    pub(crate) fn state_checks(&mut self) -> Checked {
        // The core's own time: a step that makes no core call (a client reading its buffer)
        // moves the trace's clock but not the core's.
        let now = self.core().now();
        let agents = self.core().agents();
        let status: BTreeMap<u128, AgentStatus> = agents.iter().map(|a| (a.agent_id.0, a.status)).collect();
        let leases = self.core().leases();
        for pair in leases.windows(2) {
            if pair[0].task_id == pair[1].task_id {
                return fail(
                    invariant::ONE_HOLDER_PER_KEY,
                    format!("two leases on {:?}", pair[0].task_id),
                );
            }
        }
        let mut tokens = BTreeSet::new();
        for lease in &leases {
            if now >= lease.expires_at {
                return fail(
                    invariant::ONE_HOLDER_PER_KEY,
                    format!(
                        "lease {:?} still held at {now}, past its expiry {}",
                        lease.task_id, lease.expires_at
                    ),
                );
            }
            if !tokens.insert(lease.token) || lease.token > self.token_granted {
                return fail(
                    invariant::FENCING_TOKENS_INCREASE,
                    format!(
                        "lease {:?} holds token {} (highest granted {})",
                        lease.task_id, lease.token, self.token_granted
                    ),
                );
            }
            match status.get(&lease.holder.0) {
                Some(AgentStatus::Alive | AgentStatus::Unreachable) => {}
                other => {
                    return fail(
                        invariant::DEAD_HOLDS_NOTHING,
                        format!("lease {:?} held by {} which is {other:?}", lease.task_id, lease.holder),
                    );
                }
            }
        }
        for agent in &agents {
            let (heartbeat, ttl) = (agent.last_heartbeat_at, agent.ttl_ms);
            let base = self.liveness_base(agent.agent_id.0, heartbeat);
            let consistent = match agent.status {
                AgentStatus::Alive => now < base + ttl,
                AgentStatus::Unreachable => base + ttl <= now && now < base + 2 * ttl,
                AgentStatus::Dead => self.deregistered.contains(&agent.agent_id.0) || now >= base + 2 * ttl,
            };
            if !consistent {
                return fail(
                    invariant::STATUS_MATCHES_HEARTBEAT,
                    format!(
                        "agent {} is {:?} at {now} with last heartbeat {heartbeat} (ttl counted from {base}) \
                         and ttl {ttl} ms",
                        agent.agent_id, agent.status
                    ),
                );
            }
        }
        self.check_elections(&status)?;
        let tasks = self.check_tasks(&status, &leases)?;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.machine.check_invariants())) {
            return fail(invariant::CORE_CHECK_INVARIANTS, panic_text(&panic));
        }
        self.compare_state(&agents, &leases, &tasks)
    }

    /// Every task the core lists with `status` (`None`: all), in one page, through the core's
    /// own ListTasks: a read, which changes nothing.
    fn list_tasks(&self, status: Option<TaskStatus>) -> Checked<Vec<TaskView>> {
        match self.core().list_tasks_page(status, 10_000, "") {
            Ok(Reply::Tasks { tasks, next_page_token }) if next_page_token.is_empty() => Ok(tasks),
            other => fail(
                invariant::TASK_ONE_STATE,
                format!("ListTasks({status:?}) answered {}", brief(&other)),
            ),
        }
    }

    /// The task invariants: each task under exactly one status (the model's), none lost before
    /// its retention ran out, every CLAIMED task's claimer not DEAD and holding the claim lease
    /// with the claim's token. Returns every task, in creation order.
    fn check_tasks(&mut self, status: &BTreeMap<u128, AgentStatus>, leases: &[LeaseView]) -> Checked<Vec<TaskView>> {
        let now = self.core().now();
        let tasks = self.list_tasks(None)?;
        let mut filed: BTreeMap<u128, TaskStatus> = BTreeMap::new();
        for under in [
            TaskStatus::Pending,
            TaskStatus::Claimed,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Dead,
        ] {
            for task in self.list_tasks(Some(under))? {
                if task.status != under {
                    return fail(
                        invariant::TASK_ONE_STATE,
                        format!("task {} is listed under {under:?} but is {:?}", task.id, task.status),
                    );
                }
                if let Some(other) = filed.insert(task.id.0, under) {
                    return fail(
                        invariant::TASK_ONE_STATE,
                        format!("task {} is listed under {other:?} and under {under:?}", task.id),
                    );
                }
            }
        }
        for (position, task) in tasks.iter().enumerate() {
            if !filed.contains_key(&task.id.0) {
                return fail(
                    invariant::TASK_ONE_STATE,
                    format!("task {} ({:?}) is listed under no status", task.id, task.status),
                );
            }
            // Both lists are in creation order: the same task sits at the same place, unless
            // they differ in more than status (which `model.state_agrees` reports).
            let modelled = match self.model.tasks().nth(position) {
                Some(m) if m.id == task.id => Some(m),
                _ => self.model.tasks().find(|m| m.id == task.id),
            };
            if let Some(modelled) = modelled
                && modelled.status != task.status
            {
                return fail(
                    invariant::TASK_ONE_STATE,
                    format!(
                        "task {} is {:?} in the core, {:?} in the model",
                        task.id, task.status, modelled.status
                    ),
                );
            }
        }
        if filed.len() != tasks.len() {
            return fail(
                invariant::TASK_ONE_STATE,
                format!("{} tasks listed by status, {} in all", filed.len(), tasks.len()),
            );
        }
        let retention = self.config.core.task_retention_ms;
        self.created
            .retain(|_, c| c.finished_at.is_none_or(|at| now < at.saturating_add(retention)));
        let mut known: Vec<u128> = tasks.iter().map(|t| t.id.0).collect();
        known.sort_unstable();
        if let Some((id, created)) = self.created.iter().find(|(id, _)| known.binary_search(id).is_err()) {
            return fail(
                invariant::TASK_NONE_LOST,
                format!(
                    "task {:032x} (finished at {:?}, retention {retention} ms) is no longer known at {now}",
                    id, created.finished_at
                ),
            );
        }
        for task in tasks.iter().filter(|t| t.status == TaskStatus::Claimed) {
            let Some(claimer) = task.claimed_by else {
                return fail(
                    invariant::TASK_CLAIMED_HOLDER_ALIVE_WITH_LEASE,
                    format!("CLAIMED task {} names no claimer", task.id),
                );
            };
            let claimer_status = status.get(&claimer.0);
            if !matches!(claimer_status, Some(AgentStatus::Alive | AgentStatus::Unreachable)) {
                return fail(
                    invariant::TASK_DEAD_AGENT_OWNS_NO_CLAIM,
                    format!("task {} is CLAIMED by {claimer}, which is {claimer_status:?}", task.id),
                );
            }
            let id = task.id.to_string();
            let lease = leases.iter().find(|l| *l.task_id == *id);
            let token = self.created.get(&task.id.0).and_then(|c| c.claim_token);
            if lease.is_none_or(|l| l.holder != claimer || Some(l.token) != token) {
                return fail(
                    invariant::TASK_CLAIMED_HOLDER_ALIVE_WITH_LEASE,
                    format!(
                        "task {} is CLAIMED by {claimer} under token {token:?}; the lease on its id: {}",
                        task.id,
                        brief(&lease)
                    ),
                );
            }
        }
        Ok(tasks)
    }

    fn check_elections(&mut self, status: &BTreeMap<u128, AgentStatus>) -> Checked {
        for (view, candidates) in self.core().elections() {
            let previous = self.terms.get(&view.group).copied().unwrap_or(0);
            if view.term < previous {
                return fail(
                    invariant::TERMS_NEVER_DECREASE,
                    format!("group {:?} went from term {previous} to {}", view.group, view.term),
                );
            }
            if view.leader != candidates.first().copied() {
                return fail(
                    invariant::LEADER_IS_LIVE_CANDIDATE,
                    format!("group {:?} led by {:?}, FIFO {candidates:?}", view.group, view.leader),
                );
            }
            if view.leader.is_some() && view.term == 0 {
                return fail(
                    invariant::LEADER_IS_LIVE_CANDIDATE,
                    format!("group {:?} led in term 0", view.group),
                );
            }
            for (position, candidate) in candidates.iter().enumerate() {
                if !matches!(
                    status.get(&candidate.0),
                    Some(AgentStatus::Alive | AgentStatus::Unreachable)
                ) {
                    return fail(
                        invariant::DEAD_HOLDS_NOTHING,
                        format!(
                            "group {:?} FIFO holds {candidate} which is {:?}",
                            view.group,
                            status.get(&candidate.0)
                        ),
                    );
                }
                if candidates[position + 1..].contains(candidate) {
                    return fail(
                        invariant::LEADER_IS_LIVE_CANDIDATE,
                        format!("group {:?} FIFO holds {candidate} twice", view.group),
                    );
                }
            }
            if view.term != previous {
                self.terms.insert(Arc::clone(&view.group), view.term);
            }
        }
        Ok(())
    }

    fn compare_state(
        &self,
        agents: &[agentkeeper::core::AgentView],
        leases: &[agentkeeper::core::events::LeaseView],
        tasks: &[TaskView],
    ) -> Checked {
        let model_agents = self.model.agents();
        // Cards are compared where they travel (Register's event, GetAgent, Find); here the
        // lifecycle fields, which is what time changes.
        let lifecycle =
            |a: &agentkeeper::core::AgentView| (a.agent_id, a.status, a.registered_at, a.last_heartbeat_at, a.ttl_ms);
        let same = agents.len() == model_agents.len()
            && agents
                .iter()
                .zip(&model_agents)
                .all(|(a, b)| lifecycle(a) == lifecycle(b));
        if !same {
            let at = agents.iter().zip(&model_agents).position(|(a, b)| a != b);
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "agents differ ({} in the core, {} in the model), first at {at:?}: core {} model {}",
                    agents.len(),
                    model_agents.len(),
                    brief(&at.map(|i| &agents[i])),
                    brief(&at.map(|i| &model_agents[i]))
                ),
            );
        }
        let model_leases = self.model.leases();
        if leases != model_leases.as_slice() {
            return fail(
                invariant::MODEL_STATE,
                format!("leases differ: core {} model {}", brief(&leases), brief(&model_leases)),
            );
        }
        let elections = self.core().elections();
        let model_elections = self.model.elections();
        if elections != model_elections {
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "elections differ: core {} model {}",
                    brief(&elections),
                    brief(&model_elections)
                ),
            );
        }
        if tasks.len() != self.model.tasks().len() || !tasks.iter().zip(self.model.tasks()).all(|(a, b)| a == b) {
            let model_tasks: Vec<&TaskView> = self.model.tasks().collect();
            let at = tasks
                .iter()
                .zip(&model_tasks)
                .position(|(a, b)| a != *b)
                .unwrap_or(tasks.len().min(model_tasks.len()));
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "tasks differ ({} in the core, {} in the model), first at #{at}: core {} model {}",
                    tasks.len(),
                    model_tasks.len(),
                    brief(&tasks.get(at)),
                    brief(&model_tasks.get(at))
                ),
            );
        }
        let stats = self.core().stats();
        let counters = (
            stats.sequence_next,
            stats.fencing_token_last,
            stats.watchers,
            stats.policies,
            stats.claims_waiting,
        );
        let model_counters = (
            self.model.sequence_next(),
            self.model.token_last(),
            self.model.watchers(),
            self.model.policies_len(),
            self.model.waiting_claims(),
        );
        if counters != model_counters {
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "(sequence_next, token_last, watchers, policies, claims_waiting): core {counters:?} model \
                     {model_counters:?}"
                ),
            );
        }
        let task_counts = (
            stats.tasks_pending,
            stats.tasks_claimed,
            stats.tasks_completed,
            stats.tasks_dead,
        );
        let model_task_counts = (
            self.model.task_count(TaskStatus::Pending),
            self.model.task_count(TaskStatus::Claimed),
            self.model.task_count(TaskStatus::Completed),
            self.model.task_count(TaskStatus::Dead),
        );
        if task_counts != model_task_counts {
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "task counts (pending, claimed, completed, dead): core {task_counts:?} model {model_task_counts:?}"
                ),
            );
        }
        if self.policies_touched && self.core().policies() != self.model.policies() {
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "policies differ: core {} model {}",
                    brief(&self.core().policies()),
                    brief(&self.model.policies())
                ),
            );
        }
        Ok(())
    }
}

/// The core's events against the model's, in order.
pub(crate) fn compare_events(events: &[Arc<Event>], expected: &[Arc<Event>]) -> Checked {
    if events == expected {
        return Ok(());
    }
    let at = events
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(events.len().min(expected.len()));
    fail(
        invariant::MODEL_EVENTS,
        format!(
            "{} events from the core, {} from the model; first difference at #{at}: core {} model {}",
            events.len(),
            expected.len(),
            brief(&events.get(at)),
            brief(&expected.get(at))
        ),
    )
}

/// The first part of two core states that differs, readably.
pub(crate) fn snapshot_difference(before: &CoreSnapshot, after: &CoreSnapshot) -> String {
    fn first<T: PartialEq + std::fmt::Debug>(name: &str, before: &[T], after: &[T]) -> Option<String> {
        if before == after {
            return None;
        }
        let at = before
            .iter()
            .zip(after)
            .position(|(a, b)| a != b)
            .unwrap_or(before.len().min(after.len()));
        Some(format!(
            "{name}: {} before the crash, {} recovered; first difference at #{at}: before {} recovered {}",
            before.len(),
            after.len(),
            brief(&before.get(at)),
            brief(&after.get(at))
        ))
    }
    let counters = |s: &CoreSnapshot| {
        (
            s.registration_next,
            s.token_last,
            s.sequence_next,
            s.hash_seed,
            s.rng_seed,
            s.rng_stream,
            s.rng_word_pos,
            s.task_order_next,
            s.waiter_next,
        )
    };
    first("agents", &before.agents, &after.agents)
        .or_else(|| first("leases", &before.leases, &after.leases))
        .or_else(|| first("groups", &before.groups, &after.groups))
        .or_else(|| first("policies", &before.policies, &after.policies))
        .or_else(|| first("events", &before.events, &after.events))
        .or_else(|| first("tasks", &before.tasks, &after.tasks))
        .or_else(|| first("waiting claims", &before.waiters, &after.waiters))
        .unwrap_or_else(|| {
            format!(
                "(registration_next, token_last, sequence_next, hash_seed, rng seed, stream, word position, \
                 task_order_next, waiter_next): before {:?} recovered {:?}",
                counters(before),
                counters(after)
            )
        })
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        return format!("panic: {text}");
    }
    if let Some(text) = panic.downcast_ref::<String>() {
        return format!("panic: {text}");
    }
    "panic with a non-text payload".into()
}
