//! Read commands that list state for operators: ListLeases and ListElections (for `ctl`), and
//! the dashboard's Overview (counts plus bounded lists, and the event sequence to watch from).
//!
//! Architecture invariant: nothing here mutates state, every list comes out in a defined order,
//! and each answer's work is bounded by its page size (a selection, not a sort of everything).

use std::cmp::Ordering;

use super::events::{AgentView, ElectionView, LeaseView};
use super::types::{AgentId, Millis, Policy};
use super::{Core, CoreStats, Outcome, Reply, validate};

/// Leases in one ListLeases page at most: 2000 keys of the longest kind (1 KiB) still fit a
/// 4 MiB message with their holders and times.
pub const LEASE_PAGE_SIZE_MAX: usize = 2000;

/// What the dashboard shows, read in one command so that its parts agree with each other and
/// with `sequence_next`: events from that sequence on are exactly the changes after this view.
#[derive(Clone, Debug, PartialEq)]
pub struct Overview {
    pub now: Millis,
    pub stats: CoreStats,
    /// In registration order, at most the asked number (the oldest first).
    pub agents: Vec<AgentView>,
    /// By key, at most the asked number.
    pub leases: Vec<LeaseView>,
    /// By group, with the candidates in FIFO order.
    pub elections: Vec<(ElectionView, Vec<AgentId>)>,
    /// By id, at most the asked number.
    pub policies: Vec<Policy>,
}

/// Keeps the `limit` smallest items in `order`, sorted: O(n) selection, then a sort of `limit`.
fn smallest_sorted<T>(mut items: Vec<T>, limit: usize, order: impl Fn(&T, &T) -> Ordering) -> Vec<T> {
    if items.len() > limit {
        if limit == 0 {
            return Vec::new();
        }
        items.select_nth_unstable_by(limit - 1, &order);
        items.truncate(limit);
    }
    items.sort_unstable_by(order);
    items
}

impl Core {
    /// Leases whose key starts with `prefix`, by key, one page at a time; the page token is the
    /// last key of the previous page.
    pub(super) fn list_leases(&self, prefix: &str, page_size: u32, page_token: &str) -> Outcome {
        validate::length("prefix", prefix, 0, validate::LEASE_KEY_BYTES_MAX)?;
        validate::length("page_token", page_token, 0, validate::LEASE_KEY_BYTES_MAX)?;
        let limit = validate::page_size(page_size).min(LEASE_PAGE_SIZE_MAX);
        let matching: Vec<&super::leases::Lease> = self
            .leases
            .iter()
            .filter(|lease| {
                lease.task_id.starts_with(prefix) && (page_token.is_empty() || *lease.task_id > *page_token)
            })
            .collect();
        let more = matching.len() > limit;
        let page = smallest_sorted(matching, limit, |a, b| a.task_id.cmp(&b.task_id));
        let next_page_token = match page.last() {
            Some(last) if more => last.task_id.to_string(),
            _ => String::new(),
        };
        Ok(Reply::Leases {
            leases: page.into_iter().map(|lease| lease.view()).collect(),
            next_page_token,
        })
    }

    /// Every election group, by name, with its candidates in FIFO order.
    pub(super) fn list_elections(&self) -> Outcome {
        Ok(Reply::Elections(self.elections()))
    }

    /// The dashboard's view: every count, and at most `agents_max` agents, `leases_max` leases
    /// and policies.
    pub(super) fn overview(&self, agents_max: u32, leases_max: u32) -> Outcome {
        let agents: Vec<(u64, AgentView)> = self
            .registry
            .iter()
            .map(|agent| (agent.registration, agent.view()))
            .collect();
        let agents = smallest_sorted(agents, agents_max as usize, |a, b| a.0.cmp(&b.0));
        let leases: Vec<&super::leases::Lease> = self.leases.iter().collect();
        let leases = smallest_sorted(leases, leases_max as usize, |a, b| a.task_id.cmp(&b.task_id));
        let policies = self.policies.first(leases_max as usize);
        Ok(Reply::Overview(Box::new(Overview {
            now: self.now,
            stats: self.stats(),
            agents: agents.into_iter().map(|(_, view)| view).collect(),
            leases: leases.into_iter().map(|lease| lease.view()).collect(),
            elections: self.elections(),
            policies,
        })))
    }
}
