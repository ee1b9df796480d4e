//! Read commands that list state a page at a time: ListLeases, ListPolicies, ListElections,
//! the dashboard's ListAgents, and its Overview (counts plus the first page of each list, and
//! the event sequence to watch from). ListTasks pages in `tasks.rs` the same way.
//!
//! Architecture invariant: nothing here mutates state; every page is a range read of an ordered
//! index from its cursor (the last key the previous page showed), so a page's work is bounded by
//! its size (and, for a filtered read, by a fixed scan budget), never by the table's; every list
//! comes out in a defined order.

use std::ops::Bound;
use std::sync::Arc;

use super::elections::GroupListing;
use super::events::{AgentView, LeaseView};
use super::registry::ByRegistration;
use super::types::{AgentStatus, Millis, Policy};
use super::{Core, CoreError, CoreStats, ErrorCode, Outcome, Reply, validate};

/// Leases in one ListLeases page at most: 2000 keys of the longest kind (1 KiB) still fit a
/// 4 MiB message with their holders and times.
pub const LEASE_PAGE_SIZE_MAX: usize = 2000;
/// Policies, election groups, agents and tasks in one page at most (the gRPC services gather
/// bigger pages from several, each its own command).
pub const PAGE_SIZE_MAX: usize = 1000;
/// Entries of each list an Overview shows at most.
pub const OVERVIEW_LIST_MAX: usize = 1000;

/// One page of a listing, with the cursor to go on from and the work it took.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts (the last key this one looked at); `None` on the last page.
    pub next: Option<String>,
    /// Index entries looked at: a page's work, which its tests bound.
    pub examined: usize,
}

impl<T> Page<T> {
    pub fn new() -> Self {
        Page {
            items: Vec::new(),
            next: None,
            examined: 0,
        }
    }

    /// The page token a reply carries: empty on the last page.
    pub fn token(&self) -> String {
        self.next.clone().unwrap_or_default()
    }
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page::new()
    }
}

/// What the dashboard shows, read in one command so that its parts agree with each other and
/// with `sequence_next`: events from that sequence on are exactly the changes after this view.
#[derive(Clone, Debug, PartialEq)]
pub struct Overview {
    pub now: Millis,
    pub stats: CoreStats,
    /// In registration order, any status, at most the asked number (the oldest first).
    pub agents: Vec<AgentView>,
    /// By key, at most the asked number.
    pub leases: Vec<LeaseView>,
    /// By group, with the head of each line of candidates, at most the asked number of leases.
    pub elections: Vec<GroupListing>,
    /// By id, at most the asked number of leases.
    pub policies: Vec<Arc<Policy>>,
    /// Each list's next page token (ListAgents, ListLeases, ListElections, ListPolicies); empty
    /// when the list is whole.
    pub agents_next: String,
    pub leases_next: String,
    pub elections_next: String,
    pub policies_next: String,
}

/// A page token that is a registration number (ListAgents), or none when empty.
fn registration_token(page_token: &str) -> Result<Option<u64>, CoreError> {
    if page_token.is_empty() {
        return Ok(None);
    }
    page_token.parse::<u64>().map(Some).map_err(|_| {
        CoreError::new(
            ErrorCode::InvalidArgument,
            format!(
                "page_token {} is not one this daemon gave out",
                validate::quote(page_token)
            ),
        )
    })
}

/// The next agents after `after` in registration order from one status's index, or from all
/// three merged (any status): at most `limit`, with the cursor when more follow.
fn agents_after(indexes: &[&ByRegistration], after: Option<u64>, limit: usize) -> Page<usize> {
    let from = after.map_or(0, |a| a + 1);
    let mut heads: Vec<_> = indexes.iter().map(|i| i.range(from..).peekable()).collect();
    let mut page = Page::new();
    let mut last = None;
    if limit == 0 {
        return page;
    }
    loop {
        let next = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, head)| head.peek().map(|&(&r, _)| (r, i)))
            .min();
        page.examined += 1;
        let Some((registration, i)) = next else { break };
        if page.items.len() == limit {
            page.next = last.map(|r: u64| r.to_string());
            break;
        }
        let (_, &key) = heads[i].next().expect("peeked");
        page.items.push(key);
        last = Some(registration);
    }
    page
}

impl Core {
    /// Leases whose key starts with `prefix`, by key, one page at a time; the page token is the
    /// last key of the previous page. A range read of the ordered key index from the token (or
    /// the prefix): it stops at the first key past the prefix.
    pub(super) fn list_leases(&self, prefix: &str, page_size: u32, page_token: &str) -> Outcome {
        validate::length("prefix", prefix, 0, validate::LEASE_KEY_BYTES_MAX)?;
        validate::length("page_token", page_token, 0, validate::LEASE_KEY_BYTES_MAX)?;
        let limit = validate::page_size(page_size).min(LEASE_PAGE_SIZE_MAX);
        let page = self.lease_page(prefix, page_token, limit);
        Ok(Reply::Leases {
            next_page_token: page.token(),
            leases: page.items,
        })
    }

    pub(super) fn lease_page(&self, prefix: &str, page_token: &str, limit: usize) -> Page<LeaseView> {
        // Keys with the prefix sort together, from the prefix itself on.
        let start = if page_token.is_empty() || page_token < prefix {
            Bound::Included(prefix)
        } else {
            Bound::Excluded(page_token)
        };
        let mut page = Page::new();
        if limit == 0 {
            return page;
        }
        let mut leases = self
            .leases
            .by_key_from(start)
            .take_while(|lease| lease.task_id.starts_with(prefix))
            .peekable();
        while let Some(lease) = leases.next() {
            page.examined += 1;
            page.items.push(lease.view());
            if page.items.len() == limit {
                page.examined += 1;
                if leases.peek().is_some() {
                    page.next = Some(lease.task_id.to_string());
                }
                break;
            }
        }
        page
    }

    /// ListPolicies: by id, a page at a time (`POLICY_SCAN_MAX` policies looked at, at most).
    pub(super) fn list_policies(&self, subject_prefix: &str, page_size: u32, page_token: &str) -> Outcome {
        validate::length("subject_prefix", subject_prefix, 0, validate::PATTERN_BYTES_MAX)?;
        validate::length("page_token", page_token, 0, validate::POLICY_ID_BYTES_MAX)?;
        let limit = validate::page_size(page_size).min(PAGE_SIZE_MAX);
        let after = (!page_token.is_empty()).then_some(page_token);
        let page = self.policies.page(subject_prefix, after, limit);
        Ok(Reply::Policies {
            next_page_token: page.token(),
            policies: page.items,
        })
    }

    /// ListElections: groups by name, a page at a time, each with the head of its line.
    pub(super) fn list_elections(&self, page_size: u32, page_token: &str) -> Outcome {
        validate::length("page_token", page_token, 0, validate::GROUP_BYTES_MAX)?;
        let limit = validate::page_size(page_size).min(PAGE_SIZE_MAX);
        let after = (!page_token.is_empty()).then_some(page_token);
        let page = self.elections.page(after, limit);
        Ok(Reply::Elections {
            next_page_token: page.token(),
            groups: page.items,
        })
    }

    /// The dashboard's agents: with no query, one status (or all) in registration order from the
    /// page token (the last registration shown); with a query, Find's ranking of ALIVE agents
    /// (one page, best first). Carries the sequence it was read at, like Overview.
    pub(super) fn list_agents(
        &self,
        status: Option<AgentStatus>,
        query: &str,
        page_size: u32,
        page_token: &str,
    ) -> Outcome {
        validate::length("query", query, 0, validate::QUERY_BYTES_MAX)?;
        let after = registration_token(page_token)?;
        let limit = validate::page_size(page_size).min(PAGE_SIZE_MAX);
        let sequence_next = self.bus.sequence_next();
        if !query.trim().is_empty() {
            if status.is_some_and(|s| s != AgentStatus::Alive) || after.is_some() {
                return Err(CoreError::new(
                    ErrorCode::InvalidArgument,
                    "a query finds ALIVE agents, best first, in one page",
                ));
            }
            let (keys, _) = self.registry.find(query, None, &[], limit);
            return Ok(Reply::AgentPage {
                agents: keys.into_iter().map(|k| self.registry.get(k).view()).collect(),
                next_page_token: String::new(),
                sequence_next,
            });
        }
        let page = self.agent_page(status, after, limit);
        Ok(Reply::AgentPage {
            next_page_token: page.token(),
            agents: page.items,
            sequence_next,
        })
    }

    pub(super) fn agent_page(&self, status: Option<AgentStatus>, after: Option<u64>, limit: usize) -> Page<AgentView> {
        let registry = &self.registry;
        let indexes: Vec<&ByRegistration> = match status {
            Some(status) => vec![registry.with_status(status)],
            None => [AgentStatus::Alive, AgentStatus::Unreachable, AgentStatus::Dead]
                .into_iter()
                .map(|s| registry.with_status(s))
                .collect(),
        };
        let page = agents_after(&indexes, after, limit);
        Page {
            items: page.items.into_iter().map(|k| registry.get(k).view()).collect(),
            next: page.next,
            examined: page.examined,
        }
    }

    /// The dashboard's view: every count, and the first page of agents (any status, at most
    /// `agents_max`), leases, policies and election groups (at most `leases_max` each), with the
    /// token of each list's next page.
    pub(super) fn overview(&self, agents_max: u32, leases_max: u32) -> Outcome {
        let agents_max = (agents_max as usize).min(OVERVIEW_LIST_MAX);
        let lists_max = (leases_max as usize).min(OVERVIEW_LIST_MAX);
        let agents = self.agent_page(None, None, agents_max);
        let leases = self.lease_page("", "", lists_max);
        let elections = self.elections.page(None, lists_max);
        let policies = self.policies.page("", None, lists_max);
        Ok(Reply::Overview(Box::new(Overview {
            now: self.now,
            stats: self.stats(),
            agents_next: agents.token(),
            agents: agents.items,
            leases_next: leases.token(),
            leases: leases.items,
            elections_next: elections.token(),
            elections: elections.items,
            policies_next: policies.token(),
            policies: policies.items,
        })))
    }
}
