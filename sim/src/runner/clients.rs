//! The simulated clients' side of the runner: what they know (ids, tokens, page tokens from the
//! replies they saw), the commands they send, and the streams they read into bounded buffers.
//!
//! Architecture invariant: a client knows only what reached it; a reference to something it never
//! saw resolves to an id the core never issued.

use std::collections::VecDeque;
use std::sync::Arc;

use agentkeeper::core::events::{LeaseView, SubscriberId};
use agentkeeper::core::search::card_text::CardDigest;
use agentkeeper::core::tasks::{TaskStatus, TaskView};
use agentkeeper::core::types::Millis;
use agentkeeper::core::{Command, ErrorCode, Event, EventPayload, Outcome, Reply, Topic};

use super::Runner;
use crate::model::topics_match;
use crate::step::{AgentRef, Op, PageRef, TaskRef, TokenRef};

#[derive(Clone, Debug)]
pub(crate) enum Filter {
    Topics(Vec<String>),
    Election(String),
}

/// One open subscription: what it asked for, the events it must get next, and the client-side
/// bounded buffer.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) filter: Filter,
    /// Events below this sequence are not for it (resume start); 0: everything after subscribing.
    pub(crate) sequence_min: u64,
    pub(super) capacity: usize,
    pub(super) buffer: VecDeque<Arc<Event>>,
    /// Emitted events it must be handed, in order, not yet handed.
    pub(super) owed: VecDeque<Arc<Event>>,
    /// The last sequence that went into its buffer.
    pub(super) delivered_last: u64,
    /// Its buffer overflowed: it takes nothing more and waits for its last word.
    pub(super) overflowed: bool,
}

impl Subscription {
    pub(super) fn wants(&self, event: &Event) -> bool {
        if event.sequence < self.sequence_min {
            return false;
        }
        match &self.filter {
            Filter::Topics(prefixes) => topics_match(prefixes, event.topic),
            Filter::Election(group) => {
                event.topic == Topic::LeaderChanged
                    && matches!(&event.payload, EventPayload::Election(view) if *view.group == **group)
            }
        }
    }
}

impl Runner {
    /// A reply that shows a fencing token raises what clients have seen.
    pub(super) fn see_tokens(&mut self, outcome: &Outcome) {
        match outcome {
            Ok(Reply::Lease { lease, acquired: true }) | Ok(Reply::Claimed { lease, .. }) => {
                self.token_seen = self.token_seen.max(lease.token);
            }
            _ => {}
        }
    }

    /// Remembers what a visible reply named, for later steps' references.
    pub(super) fn record(&mut self, index: usize, outcome: &Outcome) {
        match outcome {
            Ok(Reply::Registered { agent_id }) => {
                self.agents.insert(index, agent_id.to_string());
            }
            Ok(Reply::Lease { lease, acquired: true }) => {
                self.grants.insert(index, lease.token);
            }
            Ok(Reply::Watching { subscriber, .. } | Reply::WatchingElection { subscriber, .. }) => {
                self.subscriber_ids.insert(index, *subscriber);
            }
            Ok(Reply::Task(task)) => {
                self.task_ids.insert(index, task.id.to_string());
            }
            Ok(Reply::Claimed { task, lease }) => {
                self.task_ids.insert(index, task.id.to_string());
                self.grants.insert(index, lease.token);
            }
            Ok(Reply::Tasks { next_page_token, .. }) if !next_page_token.is_empty() => {
                self.page_tokens.insert(index, next_page_token.clone());
            }
            Err(error) => {
                *self.coverage.errors.entry(format!("{:?}", error.code)).or_default() += 1;
            }
            // Each item of a keep-alive answer as its unary call's (renewals answer a lease).
            Ok(Reply::KeepAlive(answers)) => {
                for answer in answers {
                    match answer {
                        Ok(Reply::Lease { .. }) => self.coverage.fault("keep_alive_renewal"),
                        Ok(_) => self.coverage.fault("keep_alive_heartbeat"),
                        Err(error) => {
                            self.coverage.fault("keep_alive_item_failed");
                            *self.coverage.errors.entry(format!("{:?}", error.code)).or_default() += 1;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Counts what a visible reply says of the core's vector paths (`Coverage::vectors`).
    pub(super) fn count_vectors(&mut self, command: &Command, outcome: &Outcome) {
        let counter = match (command, outcome) {
            (Command::SetCardVector { .. }, Ok(_)) => {
                if self.core().card_vector_models().len() > 1 {
                    *self.coverage.vectors.entry("several_models_held").or_default() += 1;
                }
                "card_vector_applied"
            }
            (Command::SetCardVector { .. }, Err(error)) => match error.code {
                ErrorCode::FailedPrecondition => "card_vector_stale",
                ErrorCode::InvalidArgument => "card_vector_invalid",
                _ => "card_vector_agent_gone",
            },
            (Command::Register { vector: Some(_), .. }, Ok(Reply::Registered { agent_id })) => {
                match self.core().card_vector_model(&agent_id.to_string()) {
                    Some(_) => "register_vector_applied",
                    None => "register_vector_left_out",
                }
            }
            (Command::Find { vector: Some(_), .. }, Ok(Reply::Agents(found))) if !found.is_empty() => {
                "find_with_vector"
            }
            _ => return,
        };
        *self.coverage.vectors.entry(counter).or_default() += 1;
    }

    pub(super) fn agent(&self, agent: &AgentRef) -> String {
        match agent {
            AgentRef::Registered(step) => self
                .agents
                .get(step)
                .cloned()
                // Not a valid id: the core has never seen it, whatever it drew.
                .unwrap_or_else(|| format!("unknown-agent-of-step-{step}")),
            AgentRef::Literal(text) => text.clone(),
        }
    }

    pub(super) fn task(&self, task: &TaskRef) -> String {
        match task {
            TaskRef::Step(step) => self
                .task_ids
                .get(step)
                .cloned()
                // Not a task id (nor, as a lease key, any task's): the core has never issued it.
                .unwrap_or_else(|| format!("unknown-task-of-step-{step}")),
            TaskRef::Literal(text) => text.clone(),
        }
    }

    pub(super) fn token(&self, token: TokenRef) -> u64 {
        match token {
            TokenRef::Granted { step, offset } => self
                .grants
                .get(&step)
                .map_or(0, |&granted| granted.saturating_add_signed(offset)),
            TokenRef::Literal(token) => token,
        }
    }

    /// The command a step sends, and the buffer size of the stream it may open.
    pub(super) fn command(&self, op: &Op) -> (Command, u32) {
        let command = match op {
            Op::Register {
                card,
                ttl_seconds,
                vector,
            } => Command::Register {
                card: Box::new(card.clone()),
                ttl_seconds: *ttl_seconds,
                vector: vector.map(|v| std::sync::Arc::new(crate::vectors::register_vector(card, &v))),
            },
            Op::Heartbeat { agent } => Command::Heartbeat {
                agent_id: self.agent(agent),
            },
            Op::Deregister { agent } => Command::Deregister {
                agent_id: self.agent(agent),
            },
            Op::GetAgent { agent } => Command::GetAgent {
                agent_id: self.agent(agent),
            },
            Op::Find { query, tools, limit } => Command::Find {
                query: query.clone(),
                tools: tools.clone(),
                limit: *limit,
                vector: crate::vectors::query_vector(query),
            },
            Op::SetCardVector {
                agent,
                digest,
                model,
                other_dims,
                seed,
                zero,
            } => Command::SetCardVector {
                agent_id: self.agent(agent),
                card_digest: CardDigest(*digest),
                vector: crate::vectors::card_vector(*model, *other_dims, *seed, *zero),
            },
            Op::Watch {
                topics,
                from_sequence,
                buffer,
            } => {
                let command = Command::Watch {
                    topics: topics.clone(),
                    from_sequence: *from_sequence,
                };
                return (command, *buffer);
            }
            Op::Unwatch { sub } => Command::Unwatch {
                // A subscription never opened gets an id the core never handed out.
                subscriber: self
                    .subscriber_ids
                    .get(&sub.0)
                    .copied()
                    .unwrap_or(SubscriberId(u64::MAX)),
            },
            Op::Acquire {
                key,
                agent,
                ttl_seconds,
            } => Command::AcquireLease {
                task_id: self.task(key),
                agent_id: self.agent(agent),
                ttl_seconds: *ttl_seconds,
            },
            Op::Renew {
                key,
                agent,
                token,
                ttl_seconds,
            } => Command::RenewLease {
                task_id: self.task(key),
                agent_id: self.agent(agent),
                token: self.token(*token),
                ttl_seconds: *ttl_seconds,
            },
            Op::Release { key, agent, token } => Command::ReleaseLease {
                task_id: self.task(key),
                agent_id: self.agent(agent),
                token: self.token(*token),
            },
            Op::Campaign { group, agent } => Command::Campaign {
                group: group.clone(),
                agent_id: self.agent(agent),
            },
            Op::Resign { group, agent } => Command::Resign {
                group: group.clone(),
                agent_id: self.agent(agent),
            },
            Op::WatchElection { group, buffer } => {
                return (Command::WatchElection { group: group.clone() }, *buffer);
            }
            Op::SetPolicy { policy } => Command::SetPolicy {
                policy: Box::new(policy.clone()),
            },
            Op::DeletePolicy { id } => Command::DeletePolicy { id: id.clone() },
            Op::ListPolicies { prefix } => Command::ListPolicies {
                subject_prefix: prefix.clone(),
                page_size: 0,
                page_token: String::new(),
            },
            Op::ListLeases {
                prefix,
                page_size,
                page_token,
            } => Command::ListLeases {
                prefix: prefix.clone(),
                page_size: *page_size,
                page_token: page_token.clone(),
            },
            Op::ListElections => Command::ListElections {
                page_size: 0,
                page_token: String::new(),
            },
            Op::Overview { agents_max, leases_max } => Command::Overview {
                agents_max: *agents_max,
                leases_max: *leases_max,
            },
            Op::CheckPolicy {
                subject,
                action,
                resource,
            } => Command::CheckPolicy {
                subject: subject.clone(),
                action: action.clone(),
                resource: resource.clone(),
            },
            Op::CreateTask {
                kind,
                input,
                tools,
                max_retries,
                ttl_seconds,
            } => Command::CreateTask {
                kind: kind.clone(),
                input: input.clone().into_bytes(),
                required_tools: tools.clone(),
                max_retries: *max_retries,
                ttl_seconds: *ttl_seconds,
            },
            Op::ClaimTask { agent, wait_ms } => Command::ClaimTask {
                agent_id: self.agent(agent),
                wait_ms: *wait_ms,
            },
            Op::CompleteTask { task, agent, output } => Command::CompleteTask {
                task_id: self.task(task),
                agent_id: self.agent(agent),
                output: output.clone().into_bytes(),
            },
            Op::FailTask { task, agent, reason } => Command::FailTask {
                task_id: self.task(task),
                agent_id: self.agent(agent),
                reason: reason.clone(),
            },
            Op::GetTask { task } => Command::GetTask {
                task_id: self.task(task),
            },
            Op::ListTasks {
                status,
                page_size,
                page,
            } => Command::ListTasks {
                status: *status,
                page_size: *page_size,
                page_token: match page {
                    // A step that got no next token: the first page.
                    PageRef::Step(step) => self.page_tokens.get(step).cloned().unwrap_or_default(),
                    PageRef::Literal(text) => text.clone(),
                },
                bytes_left: None,
            },
            Op::KeepAlive { items } => Command::KeepAlive {
                items: items.iter().map(|item| self.command(item).0).collect(),
            },
            Op::Tick | Op::Consume { .. } | Op::Crash { .. } | Op::CancelClaim { .. } | Op::ReturnTask { .. } => {
                unreachable!("{} sends no command", op.name())
            }
        };
        (command, 0)
    }

    /// Opens the runner's side of a stream the call subscribed (its client learns the id when
    /// the reply reaches it).
    pub(super) fn open_subscription(&mut self, command: &Command, outcome: &Outcome, buffer: u32) {
        let (id, filter, sequence_min) = match (command, outcome) {
            (Command::Watch { topics, from_sequence }, Ok(Reply::Watching { subscriber, .. })) => {
                (*subscriber, Filter::Topics(topics.clone()), *from_sequence)
            }
            (Command::WatchElection { group }, Ok(Reply::WatchingElection { subscriber, .. })) => {
                (*subscriber, Filter::Election(group.clone()), 0)
            }
            _ => return,
        };
        let delivered_last = match outcome {
            Ok(Reply::Watching { replay, .. }) => replay.last().map_or(0, |e| e.sequence),
            _ => 0,
        };
        self.subscriptions.insert(
            id,
            Subscription {
                filter,
                sequence_min,
                capacity: buffer.max(1) as usize,
                buffer: VecDeque::new(),
                owed: VecDeque::new(),
                delivered_last,
                overflowed: false,
            },
        );
    }
}

/// The reply of a claim on `task_id` under `token`, as a driver that could not hand it over gives
/// it back (only the task's id and the lease's token matter to the machine).
pub(super) fn undelivered_claim(task_id: &str, token: u64, now: Millis) -> Outcome {
    let id = agentkeeper::core::types::Id128::parse(task_id).unwrap_or(agentkeeper::core::types::Id128(0));
    let task = TaskView {
        id,
        kind: Arc::from(""),
        input: Arc::from(&[][..]),
        output: Arc::from(&[][..]),
        status: TaskStatus::Claimed,
        required_tools: agentkeeper::core::tasks::tool_set(&[]),
        max_retries: 0,
        retry_count: 0,
        claimed_by: None,
        failure_reason: Arc::from(""),
        created_at: now,
        claimed_at: Some(now),
        completed_at: None,
        ttl_ms: 0,
    };
    let lease = LeaseView {
        task_id: Arc::from(task_id),
        holder: agentkeeper::core::types::Id128(0),
        token,
        acquired_at: now,
        expires_at: now,
    };
    Ok(Reply::Claimed {
        task: Box::new(task),
        lease,
    })
}
