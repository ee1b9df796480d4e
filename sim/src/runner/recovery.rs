//! Crashes and restarts: the torn write, recovery from the store image through the daemon's own
//! scan and replay, the checks that nothing durable was lost and nothing else survived, and the
//! durable point the runner falls back to when entries never become durable.
//!
//! Architecture invariant: recovery reads only the image's bytes; what the old process held in
//! memory (calls in flight, streams, staged entries) is gone with it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use agentkeeper::core::Core;
use agentkeeper::core::machine::{Input, Machine};
use agentkeeper::core::snapshot::CoreSnapshot;
use agentkeeper::core::types::{AgentStatus, Millis};

use super::{CreatedTask, Runner};
use crate::checks::{Checked, fail, invariant, snapshot_difference};
use crate::image::ReadError;
use crate::model::Model;
use crate::step::{Io, Planted, TornWrite};

/// The durable state to fall back to if entries not yet durable are lost (a slow disk, a failed
/// write): the core's state and everything the runner keeps in step with it.
#[derive(Clone)]
pub(super) struct DurablePoint {
    snapshot: CoreSnapshot,
    model: Model,
    created: BTreeMap<u128, CreatedTask>,
    deregistered: BTreeSet<u128>,
    terms: BTreeMap<Arc<str>, u64>,
}

impl Runner {
    /// Remembers the durable state, unless it already is remembered (earlier entries still
    /// wait) or nothing can be written any more.
    pub(super) fn keep_durable_point(&mut self) {
        if self.durable_point.is_some() || self.machine.failed().is_some() {
            return;
        }
        debug_assert!(self.machine.is_durable() && !self.image.has_staged());
        self.durable_point = Some(DurablePoint {
            snapshot: self.core().snapshot(),
            model: self.model.clone(),
            created: self.created.clone(),
            deregistered: self.deregistered.clone(),
            terms: self.terms.clone(),
        });
    }

    /// The daemon crashes and restarts from the store image (see `Op::Crash`): the torn write
    /// first, if any, then recovery through the store's scan and replay, the checks that nothing
    /// durable was lost, and a new machine around the recovered core, which gives the restart
    /// grace. Every stream broke and every call in flight went unanswered; the clients keep the
    /// ids and tokens they knew.
    pub(super) fn crash(&mut self, torn: Option<&TornWrite>) -> Checked {
        self.coverage.fault("crash");
        let torn_written = match torn {
            Some(torn) => {
                let written = self.torn_write(torn)?;
                if written {
                    self.coverage.fault("torn_crash");
                }
                written
            }
            None => false,
        };
        // Entries staged and not written are lost with the process.
        self.image.discard_staged();
        let point = self.durable_point.take();
        let before = match &point {
            Some(point) => point.snapshot.clone(),
            None => self.core().snapshot(),
        };
        let core = self.recover(before, torn_written || self.image.torn_tail())?;
        if let Some(point) = point {
            self.model = point.model;
            self.created = point.created;
            self.deregistered = point.deregistered;
            self.terms = point.terms;
        }
        self.token_granted = core.stats().fencing_token_last;
        let now = self.now.max(core.now());
        self.grant_grace(&core.agents(), now);
        self.machine = Machine::new(core, true);
        self.subscriptions.clear();
        self.subscriber_ids.clear();
        // The callers of calls in flight went with the old process: nobody answers them.
        if !self.waiting_claims.is_empty() {
            self.coverage.fault("claims_dropped");
        }
        self.calls.clear();
        self.waiting_claims.clear();
        self.answers_owed.clear();
        self.waiters.clear();
        self.event_requires.clear();
        self.policies_touched = true;
        // The restart grace comes first, then what fell due while the daemon was down and the
        // grace left due (a DEAD agent's or a finished task's retention) fires.
        let sequence_before = self.core().stats().sequence_next;
        self.model.restart_grace(now);
        self.model.tick(now);
        self.machine.handle(now, Input::Grace);
        self.after_input(sequence_before)?;
        self.end_batch(Io::Durable)
    }

    /// Reads the image back as the daemon's start-up does and rebuilds the core from it,
    /// checking that exactly the whole records came back (a torn tail cut, if `torn`) and that
    /// the state is `before`'s.
    pub(super) fn recover(&mut self, mut before: CoreSnapshot, torn_written: bool) -> Checked<Core> {
        let (whole_len, whole_records) = (self.image.whole_len(), self.image.records());
        let (mut recovered, reading) = match self.image.read() {
            Ok(read) => read,
            Err(ReadError::Damaged(detail)) => {
                return fail(
                    invariant::RECOVERY_TORN_TAIL_CUT,
                    format!("the scan refused the log as damaged (the daemon would not start): {detail}"),
                );
            }
            Err(ReadError::Undecodable(detail)) => {
                return fail(
                    invariant::RECOVERY_STATE_MATCHES,
                    format!("the image does not decode: {detail}"),
                );
            }
        };
        if reading.from_snapshot {
            self.coverage.fault("recovered_from_snapshot");
        }
        let kept = (reading.valid_len, reading.records);
        if kept != (whole_len, whole_records) || reading.torn.is_some() != torn_written {
            return fail(
                invariant::RECOVERY_TORN_TAIL_CUT,
                format!(
                    "{} log of {whole_records} whole records ({whole_len} bytes) read back as {} records \
                     ({} bytes), tail cut: {:?}",
                    if torn_written { "a torn" } else { "an untorn" },
                    reading.records,
                    reading.valid_len,
                    reading.torn
                ),
            );
        }
        if self.config.planted == Planted::DropLastLogRecord {
            recovered.records.pop();
        }
        let mut core = agentkeeper::store::replay(recovered, self.config.core.clone());
        // Answers the replay made to waiting claims have no caller in the new process.
        let mut stale = Vec::new();
        core.drain_claim_answers(&mut stale);
        let mut after = core.snapshot();
        // The one thing a replay may leave behind: the clock of reads and ticks that fired
        // nothing, which are not logged.
        after.now = before.now;
        // And a waiting claim whose agent was forgotten: a snapshot image leaves it out when it
        // is restored (`restore_waiter`), which changes no later answer but its own; the
        // restart drops every waiting claim anyway.
        let known: BTreeSet<u128> = before.agents.iter().map(|a| a.id.0).collect();
        before.waiters.retain(|w| known.contains(&w.agent_id.0));
        after.waiters.retain(|w| known.contains(&w.agent_id.0));
        if after != before {
            return fail(
                invariant::RECOVERY_STATE_MATCHES,
                format!(
                    "recovered from {} and {} records, the state differs: {}",
                    if reading.from_snapshot {
                        "a snapshot"
                    } else {
                        "the header"
                    },
                    reading.records,
                    snapshot_difference(&before, &after)
                ),
            );
        }
        Ok(core)
    }

    /// A torn crash's write: what is due fires and is made durable (that batch's write
    /// completed), then the command is handled and checked like any, and the daemon dies while
    /// writing its batch: its entry lands torn, so nothing it released may have left. Returns
    /// whether an entry was torn (a command that is not logged leaves none).
    pub(super) fn torn_write(&mut self, torn: &TornWrite) -> Checked<bool> {
        self.handle(Input::Tick)?;
        self.end_batch(Io::Durable)?;
        self.keep_durable_point();
        // Nothing of the step reaches its client: the daemon dies before the batch is durable.
        self.perform(usize::MAX, &torn.op, true)?;
        if self.image.has_staged() {
            self.image.commit_torn(torn.tear);
            return Ok(true);
        }
        Ok(false)
    }

    /// Where each live agent's ttl counts from after a restart's grace at `now`, for the status
    /// invariant: ALIVE, a full ttl from `now` at least; UNREACHABLE, dead no sooner than a ttl
    /// from `now`. `agents` is the recovered state; agents no longer known are dropped.
    pub(super) fn grant_grace(&mut self, agents: &[agentkeeper::core::AgentView], now: Millis) {
        let mut bases = BTreeMap::new();
        for agent in agents {
            let id = agent.agent_id.0;
            let base = self.liveness_base(id, agent.last_heartbeat_at);
            let graced = match agent.status {
                AgentStatus::Alive => base.max(now),
                AgentStatus::Unreachable => base.max(now - agent.ttl_ms),
                AgentStatus::Dead => continue,
            };
            bases.insert(id, graced);
        }
        self.grace_bases = bases;
    }

    /// Where an agent's ttl counts from: its last heartbeat, or a restart's grace if later.
    pub(crate) fn liveness_base(&self, id: u128, last_heartbeat_at: Millis) -> Millis {
        self.grace_bases
            .get(&id)
            .map_or(last_heartbeat_at, |&base| base.max(last_heartbeat_at))
    }
}
