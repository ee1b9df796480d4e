//! Exclusive leases on string keys with fencing tokens: re-entrant acquire, renew, release, and
//! expiry by timer.
//!
//! Architecture invariant: fencing tokens come from one counter that only grows; a key has at
//! most one holder; every lease is indexed by key twice (hashed for the hot path, ordered for
//! listings), is listed under its holder (for death clean-up) and owns exactly one timer.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use slab::Slab;

use super::events::{EventPayload, LeaseView, Topic};
use super::registry::Registry;
use super::timers::{TimerKey, TimerWheel};
use super::types::{AgentId, AgentStatus, Map, Millis, new_map};
use super::validate;
use super::{Core, CoreError, Deadline, ErrorCode, Outcome, Reply, limit_reached};

pub struct Lease {
    pub task_id: Arc<str>,
    pub holder: usize,
    pub holder_id: AgentId,
    pub token: u64,
    pub acquired_at: Millis,
    pub expires_at: Millis,
    /// The ttl of the last acquire or renew; a renew with ttl 0 reuses it.
    pub ttl_ms: u64,
    pub timer: TimerKey,
    /// The task this lease is the claim of (its key is the task's id), if any.
    pub task: Option<usize>,
}

impl Lease {
    pub fn view(&self) -> LeaseView {
        LeaseView {
            task_id: Arc::clone(&self.task_id),
            holder: self.holder_id,
            token: self.token,
            acquired_at: self.acquired_at,
            expires_at: self.expires_at,
        }
    }
}

pub struct LeaseTable {
    pub(super) leases: Slab<Lease>,
    /// By key, hashed: acquire, renew and release.
    pub(super) by_task: Map<Arc<str>, usize>,
    /// By key, ordered: ListLeases pages are range reads of it.
    pub(super) by_key: BTreeMap<Arc<str>, usize>,
    pub(super) token_last: u64,
}

impl LeaseTable {
    pub fn new(hash_seed: u64) -> Self {
        LeaseTable {
            leases: Slab::new(),
            by_task: new_map(hash_seed),
            by_key: BTreeMap::new(),
            token_last: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The last fencing token handed out (0 before the first).
    pub fn token_last(&self) -> u64 {
        self.token_last
    }

    /// Every lease, in slab order (sort before showing).
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.iter().map(|(_, lease)| lease)
    }

    /// The leases from `start` on, by key.
    pub fn by_key_from<'a>(&'a self, start: Bound<&str>) -> impl Iterator<Item = &'a Lease> + 'a {
        self.by_key
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, &key)| &self.leases[key])
    }

    /// Files a new lease under its key in both indexes.
    pub(super) fn index(&mut self, key: usize) {
        let task_id = Arc::clone(&self.leases[key].task_id);
        let hashed = self.by_task.insert(Arc::clone(&task_id), key);
        let ordered = self.by_key.insert(task_id, key);
        assert!(hashed.is_none() && ordered.is_none(), "a key has at most one lease");
    }

    pub fn get(&self, key: usize) -> &Lease {
        &self.leases[key]
    }

    fn lookup(&self, task_id: &str) -> Result<usize, CoreError> {
        self.by_task.get(task_id).copied().ok_or_else(|| {
            CoreError::new(
                ErrorCode::NotFound,
                format!("lease {} not found", validate::quote(task_id)),
            )
        })
    }

    /// The lease on `task_id`, checked to be held by `agent_id` under `token`.
    fn lookup_held(&self, task_id: &str, agent_id: &str, token: u64) -> Result<usize, CoreError> {
        let key = self.lookup(task_id)?;
        let lease = &self.leases[key];
        if AgentId::parse(agent_id) != Some(lease.holder_id) || lease.token != token {
            return Err(CoreError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "token mismatch: lease {} is held by agent \"{}\" under another token",
                    validate::quote(task_id),
                    lease.holder_id
                ),
            ));
        }
        Ok(key)
    }

    fn remove(&mut self, key: usize) -> Lease {
        let lease = self.leases.remove(key);
        let removed = self.by_task.remove(&lease.task_id);
        assert_eq!(removed, Some(key), "lease index out of step for {:?}", lease.task_id);
        let removed = self.by_key.remove(&lease.task_id);
        assert_eq!(
            removed,
            Some(key),
            "ordered lease index out of step for {:?}",
            lease.task_id
        );
        lease
    }

    pub fn check_invariants(&self, now: Millis, registry: &Registry, timers: &TimerWheel<Deadline>) {
        assert_eq!(self.by_task.len(), self.leases.len(), "lease index size");
        assert_eq!(self.by_key.len(), self.leases.len(), "ordered lease index size");
        for (key, lease) in &self.leases {
            assert_eq!(
                self.by_task.get(&lease.task_id),
                Some(&key),
                "lease {:?} not indexed",
                lease.task_id
            );
            assert_eq!(
                self.by_key.get(&lease.task_id),
                Some(&key),
                "lease {:?} not in the ordered index",
                lease.task_id
            );
            assert!(lease.token <= self.token_last, "lease token above the counter");
            assert!(now < lease.expires_at, "lease {:?} alive past expiry", lease.task_id);
            assert_eq!(
                timers.deadline(lease.timer),
                lease.expires_at,
                "lease {:?} timer",
                lease.task_id
            );
            assert_eq!(
                timers.get(lease.timer),
                &Deadline::Lease(key),
                "lease {:?} timer owner",
                lease.task_id
            );
            let holder = registry.get(lease.holder);
            assert_eq!(holder.id, lease.holder_id, "lease {:?} holder key", lease.task_id);
            assert_ne!(
                holder.status,
                AgentStatus::Dead,
                "DEAD agent holds lease {:?}",
                lease.task_id
            );
            assert_eq!(
                holder.leases.get(&lease.token),
                Some(&key),
                "lease {:?} not under its holder",
                lease.task_id
            );
        }
    }
}

impl Core {
    pub(super) fn acquire_lease(&mut self, task_id: String, agent_id: &str, ttl_seconds: u32) -> Outcome {
        validate::length("task_id", &task_id, 1, validate::LEASE_KEY_BYTES_MAX)?;
        let ttl_ms = validate::ttl_ms(ttl_seconds, validate::LEASE_TTL_SECONDS_DEFAULT)?;
        let agent = self.registry.lookup_live(agent_id)?;
        let expires_at = self.now + ttl_ms;
        if let Some(&key) = self.leases.by_task.get(task_id.as_str()) {
            let lease = &mut self.leases.leases[key];
            if lease.holder != agent {
                return Ok(Reply::Lease {
                    lease: lease.view(),
                    acquired: false,
                });
            }
            lease.expires_at = expires_at;
            lease.ttl_ms = ttl_ms;
            self.timers.reset(lease.timer, expires_at);
            let view = lease.view();
            self.emit(Topic::LeaseRenewed, EventPayload::Lease(view.clone()));
            return Ok(Reply::Lease {
                lease: view,
                acquired: true,
            });
        }
        if let Some(task) = self.tasks.by_key(&task_id) {
            let status = self.tasks.get(task).view.status;
            return Err(CoreError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "{} is a {} task's id: its lease is the claim's, taken with ClaimTask",
                    validate::quote(&task_id),
                    status.as_str()
                ),
            ));
        }
        let (_, view) = self.grant_lease(task_id.into(), agent, ttl_ms, None)?;
        Ok(Reply::Lease {
            lease: view,
            acquired: true,
        })
    }

    /// A new lease on the free key `task_id` for `agent`, with the next fencing token.
    pub(super) fn grant_lease(
        &mut self,
        task_id: Arc<str>,
        agent: usize,
        ttl_ms: u64,
        task: Option<usize>,
    ) -> Result<(usize, LeaseView), CoreError> {
        debug_assert!(!self.leases.by_task.contains_key(&*task_id));
        if self.leases.len() >= self.config.leases_max {
            return Err(limit_reached("leases_max", self.config.leases_max));
        }
        let expires_at = self.now + ttl_ms;
        let table = &mut self.leases;
        table.token_last += 1;
        let mut token = table.token_last;
        if self.config.planted_bug == super::PlantedBug::ReuseFencingToken && token.is_multiple_of(10) {
            token -= 1;
        }
        let entry = table.leases.vacant_entry();
        let key = entry.key();
        let lease = entry.insert(Lease {
            task_id,
            holder: agent,
            holder_id: self.registry.get(agent).id,
            token,
            acquired_at: self.now,
            expires_at,
            ttl_ms,
            timer: self.timers.insert(expires_at, Deadline::Lease(key)),
            task,
        });
        let view = lease.view();
        table.index(key);
        self.registry.get_mut(agent).leases.insert(token, key);
        self.emit(Topic::LeaseAcquired, EventPayload::Lease(view.clone()));
        Ok((key, view))
    }

    pub(super) fn renew_lease(&mut self, task_id: &str, agent_id: &str, token: u64, ttl_seconds: u32) -> Outcome {
        let key = self.leases.lookup_held(task_id, agent_id, token)?;
        let lease = &mut self.leases.leases[key];
        let ttl_ms = if ttl_seconds == 0 {
            lease.ttl_ms
        } else {
            validate::ttl_ms(ttl_seconds, 0)?
        };
        lease.ttl_ms = ttl_ms;
        lease.expires_at = self.now + ttl_ms;
        self.timers.reset(lease.timer, lease.expires_at);
        let view = lease.view();
        self.emit(Topic::LeaseRenewed, EventPayload::Lease(view.clone()));
        Ok(Reply::Lease {
            lease: view,
            acquired: true,
        })
    }

    pub(super) fn release_lease(&mut self, task_id: &str, agent_id: &str, token: u64) -> Outcome {
        let key = self.leases.lookup_held(task_id, agent_id, token)?;
        let lease = self.remove_lease(key);
        if let Some(task) = lease.task {
            self.claim_lease_ended(task, "lease released");
        }
        Ok(Reply::Done)
    }

    /// Takes a lease away as a release does: timer cancelled, off its holder, `lease.released`.
    pub(super) fn remove_lease(&mut self, key: usize) -> Lease {
        let lease = self.leases.remove(key);
        self.timers.cancel(lease.timer);
        self.detach_from_holder(&lease, key);
        self.emit(Topic::LeaseReleased, EventPayload::Lease(lease.view()));
        lease
    }

    /// A lease's timer fired: it has expired.
    pub(super) fn lease_expired(&mut self, key: usize, timer: TimerKey) {
        // Its holder's death, due at the same instant and handled first, may have released it.
        if self.leases.leases.get(key).is_none_or(|lease| lease.timer != timer) {
            return;
        }
        let lease = self.leases.remove(key);
        assert!(self.now >= lease.expires_at, "lease {:?} expired early", lease.task_id);
        self.detach_from_holder(&lease, key);
        self.emit(Topic::LeaseExpired, EventPayload::Lease(lease.view()));
        if let Some(task) = lease.task {
            self.claim_lease_ended(task, "lease expired");
        }
    }

    /// After a restart at `now`: no lease expires sooner than now + its ttl.
    pub(super) fn grace_leases(&mut self, now: Millis) {
        for (_, lease) in self.leases.leases.iter_mut() {
            let expires_at = lease.expires_at.max(now + lease.ttl_ms);
            if expires_at != lease.expires_at {
                lease.expires_at = expires_at;
                self.timers.reset(lease.timer, expires_at);
            }
        }
    }

    /// See `Core::failover_grace`.
    pub(super) fn failover_grace_leases(&mut self, now: Millis, grace_ms: u64) {
        for (_, lease) in self.leases.leases.iter_mut() {
            let floor = now + lease.ttl_ms.min(grace_ms);
            if lease.expires_at < floor {
                lease.expires_at = floor;
                self.timers.reset(lease.timer, floor);
            }
        }
    }

    /// Releases every lease an agent holds, in acquisition order (part of death clean-up), and
    /// returns the tasks whose claims they were, for the clean-up to fail after the elections.
    pub(super) fn release_all_leases(&mut self, agent: usize) -> Vec<usize> {
        let held = std::mem::take(&mut self.registry.get_mut(agent).leases);
        let mut claims = Vec::new();
        for key in held.into_values() {
            let lease = self.leases.remove(key);
            // Its expiry may be due at this very instant and already taken off the wheel.
            if self.timers.is_armed(lease.timer) {
                self.timers.cancel(lease.timer);
            }
            self.emit(Topic::LeaseReleased, EventPayload::Lease(lease.view()));
            if let Some(task) = lease.task {
                self.tasks.tasks[task].lease = None;
                claims.push(task);
            }
        }
        claims
    }

    fn detach_from_holder(&mut self, lease: &Lease, key: usize) {
        let removed = self.registry.get_mut(lease.holder).leases.remove(&lease.token);
        assert_eq!(
            removed,
            Some(key),
            "lease {:?} was not listed under its holder",
            lease.task_id
        );
    }
}
