//! Read-only views of the core's state for the simulator, tests and the dashboard: what a
//! reference model or an invariant needs to see that the command API does not show.
//!
//! Architecture invariant: nothing here mutates state; every list comes out in a defined order
//! (never hash-map order).

use std::sync::Arc;

use super::Core;
use super::events::{AgentView, ElectionView, Event, LeaseView};
use super::types::Policy;

impl Core {
    /// Every known agent (DEAD ones still retained included), in registration order.
    pub fn agents(&self) -> Vec<AgentView> {
        let mut agents: Vec<(u64, AgentView)> = self
            .registry
            .iter()
            .map(|agent| (agent.registration, agent.view()))
            .collect();
        agents.sort_unstable_by_key(|(registration, _)| *registration);
        agents.into_iter().map(|(_, view)| view).collect()
    }

    /// The models whose card vectors the core holds, in the order they came: name, dimension,
    /// vectors.
    pub fn card_vector_models(&self) -> Vec<(String, usize, usize)> {
        (self.registry.search.vector_models())
            .map(|(model, dims, count)| (model.to_string(), dims, count))
            .collect()
    }

    /// The model of `agent_id`'s card vector, if the agent is known and has one.
    pub fn card_vector_model(&self, agent_id: &str) -> Option<Arc<str>> {
        let key = self.registry.lookup(agent_id).ok()?;
        self.registry.search.vector(key).map(|(model, _)| Arc::clone(model))
    }

    /// Every lease held, by key.
    pub fn leases(&self) -> Vec<LeaseView> {
        let mut leases: Vec<LeaseView> = self.leases.iter().map(|lease| lease.view()).collect();
        leases.sort_unstable_by(|a, b| a.task_id.cmp(&b.task_id));
        leases
    }

    /// Every election group ever campaigned in, by name, with its candidates in FIFO order.
    pub fn elections(&self) -> Vec<(ElectionView, Vec<super::types::AgentId>)> {
        let mut groups: Vec<_> = self
            .elections
            .iter()
            .map(|group| (group.view(), group.line().collect()))
            .collect();
        groups.sort_unstable_by(|a: &(ElectionView, Vec<_>), b| a.0.group.cmp(&b.0.group));
        groups
    }

    /// One page of ListTasks, read without a command (no tick, nothing changes): what the
    /// simulator checks the task states with.
    pub fn list_tasks_page(
        &self,
        status: Option<super::tasks::TaskStatus>,
        page_size: u32,
        page_token: &str,
    ) -> super::Outcome {
        self.list_tasks(status, page_size, page_token, super::tasks::PageBytes::Whole)
    }

    /// Every policy, sorted by id.
    pub fn policies(&self) -> Vec<Policy> {
        self.policies.list("")
    }

    /// The retained events with `sequence >= from`, oldest first (what the ring still holds).
    pub fn events_since(&self, from: u64) -> Vec<Arc<Event>> {
        // The ring holds consecutive sequences, so the start is an offset, not a scan.
        let oldest = self.bus.ring.front().map_or(0, |e| e.sequence);
        let skip =
            usize::try_from(from.saturating_sub(oldest)).map_or(self.bus.ring.len(), |s| s.min(self.bus.ring.len()));
        self.bus.ring.range(skip..).cloned().collect()
    }
}
