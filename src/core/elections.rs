//! Leader elections: per-group FIFO of candidates whose head leads, with a term that grows on
//! every change of leadership.
//!
//! Architecture invariant: a group's leader is always the head of its FIFO (no FIFO, no leader);
//! a new candidate never displaces a leader; groups and their terms are never forgotten. The
//! FIFO is keyed by each candidate's place in line, which the candidate's agent also holds, so
//! joining or leaving a line of a million is logarithmic, never a walk along it.

use std::collections::BTreeMap;
use std::sync::Arc;

use slab::Slab;

use super::events::{ElectionView, EventPayload, Topic};
use super::listing::Page;
use super::registry::Registry;
use super::types::{AgentId, AgentStatus, Map, Millis, new_map};
use super::validate;
use super::{Core, Outcome, Reply, limit_reached};

pub struct Group {
    pub name: Arc<str>,
    /// Candidates by place in line (campaign order); the first leads.
    pub candidates: BTreeMap<u64, (usize, AgentId)>,
    /// The place the next candidate takes.
    pub place_next: u64,
    pub term: u64,
    pub elected_at: Millis,
}

impl Group {
    pub fn new(name: Arc<str>) -> Group {
        Group {
            name,
            candidates: BTreeMap::new(),
            place_next: 0,
            term: 0,
            elected_at: 0,
        }
    }

    pub fn view(&self) -> ElectionView {
        ElectionView {
            group: Arc::clone(&self.name),
            leader: self.candidates.first_key_value().map(|(_, &(_, id))| id),
            term: self.term,
            elected_at: self.elected_at,
        }
    }

    /// The candidates' ids in line, the leader first.
    pub fn line(&self) -> impl Iterator<Item = AgentId> + '_ {
        self.candidates.values().map(|&(_, id)| id)
    }

    /// Puts `agent` at the back of the line; returns its place.
    pub(super) fn join(&mut self, agent: usize, id: AgentId) -> u64 {
        let place = self.place_next;
        self.place_next += 1;
        self.candidates.insert(place, (agent, id));
        place
    }
}

/// Candidates one listed group shows at most (its head first); `candidates_total` counts all.
pub const CANDIDATES_LISTED_MAX: usize = 100;

/// A group as a listing shows it: its state and the head of its line of candidates.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupListing {
    pub state: ElectionView,
    /// The first candidates in line (the leader first), at most `CANDIDATES_LISTED_MAX`.
    pub candidates: Vec<AgentId>,
    pub candidates_total: usize,
}

pub struct ElectionTable {
    pub(super) groups: Slab<Group>,
    /// By name, hashed: campaign, resign, watch.
    pub(super) by_name: Map<Arc<str>, usize>,
    /// By name, ordered: ListElections pages are range reads of it.
    pub(super) by_name_ordered: BTreeMap<Arc<str>, usize>,
}

impl ElectionTable {
    pub fn new(hash_seed: u64) -> Self {
        ElectionTable {
            groups: Slab::new(),
            by_name: new_map(hash_seed),
            by_name_ordered: BTreeMap::new(),
        }
    }

    /// Adds a group, filed under its name in both indexes.
    pub(super) fn add(&mut self, group: Group) -> usize {
        let name = Arc::clone(&group.name);
        let key = self.groups.insert(group);
        let hashed = self.by_name.insert(Arc::clone(&name), key);
        let ordered = self.by_name_ordered.insert(name, key);
        assert!(hashed.is_none() && ordered.is_none(), "a group name is unique");
        key
    }

    /// Groups by name after `after`, at most `limit`, each with the head of its line.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Page<GroupListing> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Page::new();
        if limit == 0 {
            return page;
        }
        for (name, &key) in self.by_name_ordered.range::<str, _>((start, Bound::Unbounded)) {
            if page.items.len() == limit {
                page.next = page.items.last().map(|g: &GroupListing| g.state.group.to_string());
                break;
            }
            page.examined += 1;
            let group = &self.groups[key];
            debug_assert_eq!(&group.name, name);
            page.items.push(GroupListing {
                state: group.view(),
                candidates: group.line().take(CANDIDATES_LISTED_MAX).collect(),
                candidates_total: group.candidates.len(),
            });
        }
        page
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every group, in slab order (sort before showing).
    pub fn iter(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().map(|(_, group)| group)
    }

    /// The state of `group`; one nobody ever campaigned in has no leader and term 0.
    pub fn view(&self, group: &str) -> ElectionView {
        match self.by_name.get(group) {
            Some(&key) => self.groups[key].view(),
            None => ElectionView {
                group: group.into(),
                leader: None,
                term: 0,
                elected_at: 0,
            },
        }
    }

    pub fn check_invariants(&self, registry: &Registry) {
        assert_eq!(self.by_name.len(), self.groups.len(), "group index size");
        assert_eq!(
            self.by_name_ordered.len(),
            self.groups.len(),
            "ordered group index size"
        );
        for (key, group) in &self.groups {
            assert_eq!(
                self.by_name.get(&group.name),
                Some(&key),
                "group {:?} not indexed",
                group.name
            );
            assert_eq!(
                self.by_name_ordered.get(&group.name),
                Some(&key),
                "group {:?} not in the ordered index",
                group.name
            );
            if !group.candidates.is_empty() {
                assert!(group.term > 0, "group {:?} has a leader in term 0", group.name);
            }
            if let Some((&last, _)) = group.candidates.last_key_value() {
                assert!(last < group.place_next, "group {:?} place counter behind", group.name);
            }
            for (&place, &(agent, id)) in &group.candidates {
                let candidate = registry.get(agent);
                assert_eq!(candidate.id, id, "group {:?} candidate key", group.name);
                assert_ne!(
                    candidate.status,
                    AgentStatus::Dead,
                    "DEAD agent stands in group {:?}",
                    group.name
                );
                // Listed under its agent exactly once, at this place: so no agent stands twice.
                let listed: Vec<u64> = candidate
                    .groups
                    .iter()
                    .filter(|&&(g, _)| g == key)
                    .map(|&(_, p)| p)
                    .collect();
                assert_eq!(
                    listed,
                    [place],
                    "group {:?} listed under agent {} as {listed:?}",
                    group.name,
                    id
                );
            }
        }
    }
}

impl Core {
    pub(super) fn campaign(&mut self, group: String, agent_id: &str) -> Outcome {
        validate::length("group", &group, 1, validate::GROUP_BYTES_MAX)?;
        let agent = self.registry.lookup_live(agent_id)?;
        let key = match self.elections.by_name.get(group.as_str()) {
            Some(&key) => key,
            None => {
                if self.elections.len() >= self.config.groups_max {
                    return Err(limit_reached("groups_max", self.config.groups_max));
                }
                self.elections.add(Group::new(group.into()))
            }
        };
        // The agent's own list of groups is short; the group's line may be long.
        let standing = self.registry.get(agent).groups.iter().any(|&(g, _)| g == key);
        if !standing {
            let id = self.registry.get(agent).id;
            let group = &mut self.elections.groups[key];
            let place = group.join(agent, id);
            self.registry.get_mut(agent).groups.push((key, place));
            if group.candidates.len() == 1 {
                self.leadership_changed(key);
            }
        }
        Ok(Reply::Election(self.elections.groups[key].view()))
    }

    pub(super) fn resign(&mut self, group: &str, agent_id: &str) -> Outcome {
        validate::length("group", group, 1, validate::GROUP_BYTES_MAX)?;
        // An agent the daemon does not know (never registered, or forgotten after its dead
        // retention) stands in no group: like any non-candidate, its resign is a no-op.
        let (Ok(agent), Some(&key)) = (self.registry.lookup(agent_id), self.elections.by_name.get(group)) else {
            return Ok(Reply::Done);
        };
        self.withdraw(key, agent);
        Ok(Reply::Done)
    }

    pub(super) fn watch_election(&mut self, group: String) -> Outcome {
        validate::length("group", &group, 1, validate::GROUP_BYTES_MAX)?;
        let state = self.elections.view(&group);
        let subscriber = self.bus.watch_election(Arc::clone(&state.group))?;
        Ok(Reply::WatchingElection { subscriber, state })
    }

    /// Removes an agent from every group it stands in (part of death clean-up).
    pub(super) fn withdraw_from_all_groups(&mut self, agent: usize) {
        let groups = std::mem::take(&mut self.registry.get_mut(agent).groups);
        for (key, place) in groups {
            self.remove_candidate(key, place, agent);
        }
    }

    /// Takes `agent` out of one group's FIFO; a no-op where it does not stand.
    fn withdraw(&mut self, key: usize, agent: usize) {
        let groups = &mut self.registry.get_mut(agent).groups;
        let Some(position) = groups.iter().position(|&(g, _)| g == key) else {
            return;
        };
        let (_, place) = groups.remove(position);
        self.remove_candidate(key, place, agent);
    }

    /// Takes the candidate at `place` out of group `key`'s line; a new term if it led.
    fn remove_candidate(&mut self, key: usize, place: u64, agent: usize) {
        let candidates = &mut self.elections.groups[key].candidates;
        let led = candidates.first_key_value().is_some_and(|(&first, _)| first == place);
        let removed = candidates.remove(&place);
        assert_eq!(
            removed.map(|(a, _)| a),
            Some(agent),
            "an agent listing a group stands in its line at its place"
        );
        if led {
            self.leadership_changed(key);
        }
    }

    /// The head of the FIFO changed (or the FIFO emptied): a new term begins.
    fn leadership_changed(&mut self, key: usize) {
        let group = &mut self.elections.groups[key];
        group.term += 1;
        group.elected_at = self.now;
        let view = group.view();
        self.emit(Topic::LeaderChanged, EventPayload::Election(view));
    }
}
