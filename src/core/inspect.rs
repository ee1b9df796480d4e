//! Read-only views of the core's state for the simulator, tests and the dashboard: what a
//! reference model or an invariant needs to see that the command API does not show.
//!
//! Architecture invariant: nothing here mutates state; every list comes out in a defined order
//! (never hash-map order).

use super::Core;
use super::events::{AgentView, ElectionView, LeaseView};

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
            .map(|group| (group.view(), group.candidates.iter().map(|&(_, id)| id).collect()))
            .collect();
        groups.sort_unstable_by(|a: &(ElectionView, Vec<_>), b| a.0.group.cmp(&b.0.group));
        groups
    }
}
