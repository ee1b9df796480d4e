//! A linearizability checker in the manner of Wing & Gong, with Lowe's memoisation: it looks for
//! an order of a history's operations that respects real time (an operation that returned before
//! another was invoked comes first) and that a sequential model accepts, answer for answer.
//! Operations whose outcome is unknown (no answer, or "may yet take effect") may take effect at
//! any point after their invocation, or never. Check each independent key's history alone.
//!
//! The simulator checks its simulated clusters' histories with it, the end-to-end tests the
//! histories they record from real daemons; `policies` and `lease` are the sequential models.
//!
//! Architecture invariant: the search is bounded by a budget of explored states and says
//! "inconclusive" when it runs out, never guesses; no hash-map order reaches a verdict. Nothing
//! here knows a daemon, a clock or a network: histories come in as values.

pub mod lease;
pub mod policies;

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification: applying an operation gives the next state and the answer.
pub trait Model: Clone + Eq + Hash {
    type Op;
    type Ret: PartialEq;
    fn step(&self, op: &Self::Op) -> (Self, Self::Ret);
}

/// One operation of a history, with the (logical) times it was invoked and answered.
#[derive(Clone, Debug)]
pub struct Operation<Op, Ret> {
    pub invoked: u64,
    /// By when it took effect (its answer came, or the checker's caller saw it committed);
    /// `None` when nobody knows that it did (it may have at any later time, or not at all).
    pub returned: Option<u64>,
    pub op: Op,
    /// The answer, if one is known.
    pub ret: Option<Ret>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order fits; the answered operations, by index into the history, that the search
    /// could never get past.
    NotLinearizable {
        stuck_at: Vec<usize>,
    },
    /// The budget ran out first.
    Inconclusive,
}

/// Checks `history` against `model` starting from `init`, exploring at most `budget` states.
pub fn check<M: Model>(init: &M, history: &[Operation<M::Op, M::Ret>], budget: u64) -> Verdict {
    for op in history {
        assert!(
            op.returned.is_none_or(|r| r >= op.invoked),
            "an operation returned before it was invoked"
        );
    }
    let words = history.len().div_ceil(64);
    let mut search = Search {
        history,
        seen: HashSet::new(),
        explored: 0,
        budget,
        deepest: (0, Vec::new()),
    };
    match search.dfs(init, &mut vec![0u64; words], 0) {
        Some(true) => Verdict::Linearizable,
        Some(false) => Verdict::NotLinearizable {
            stuck_at: search.deepest.1,
        },
        None => Verdict::Inconclusive,
    }
}

struct Search<'h, M: Model> {
    history: &'h [Operation<M::Op, M::Ret>],
    seen: HashSet<(Vec<u64>, M)>,
    explored: u64,
    budget: u64,
    /// The most answered operations linearized on any path, and what was left then.
    deepest: (usize, Vec<usize>),
}

fn is_set(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

fn flip(done: &mut [u64], i: usize) {
    done[i / 64] ^= 1 << (i % 64);
}

impl<M: Model> Search<'_, M> {
    /// True: the rest linearizes from `state`; false: it cannot; None: out of budget.
    fn dfs(&mut self, state: &M, done: &mut Vec<u64>, answered_done: usize) -> Option<bool> {
        let pending: Vec<usize> = (0..self.history.len()).filter(|&i| !is_set(done, i)).collect();
        // Done when every answered operation is placed (unknown ones may never take effect).
        let answered_left: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|&i| self.history[i].returned.is_some())
            .collect();
        if answered_left.is_empty() {
            return Some(true);
        }
        if !self.seen.insert((done.clone(), state.clone())) {
            return Some(false);
        }
        self.explored += 1;
        if self.explored > self.budget {
            return None;
        }
        if answered_done >= self.deepest.0 {
            self.deepest = (answered_done, answered_left.clone());
        }
        // What may come next: anything invoked before the first answer still outstanding.
        let horizon = answered_left
            .iter()
            .map(|&i| self.history[i].returned.expect("answered"))
            .min()
            .expect("some are left");
        // Answered operations first: an operation of unknown outcome is placed only when no
        // answered one fits (most histories then linearize without trying where each lands).
        let (answered, unknown): (Vec<usize>, Vec<usize>) =
            pending.into_iter().partition(|&i| self.history[i].returned.is_some());
        for i in answered.into_iter().chain(unknown) {
            let op = &self.history[i];
            if op.invoked > horizon {
                continue;
            }
            let (next, ret) = state.step(&op.op);
            if op.ret.as_ref().is_some_and(|expected| *expected != ret) {
                continue;
            }
            flip(done, i);
            let answered = answered_done + usize::from(op.returned.is_some());
            let found = self.dfs(&next, done, answered);
            flip(done, i);
            match found {
                Some(false) => {}
                other => return other,
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: write a value, read it back.
    #[derive(Clone, PartialEq, Eq, Hash)]
    struct Register(u8);

    #[derive(Clone, Debug)]
    enum RegOp {
        Write(u8),
        Read,
    }

    impl Model for Register {
        type Op = RegOp;
        type Ret = u8;
        fn step(&self, op: &RegOp) -> (Register, u8) {
            match op {
                RegOp::Write(v) => (Register(*v), 0),
                RegOp::Read => (self.clone(), self.0),
            }
        }
    }

    fn op(invoked: u64, returned: Option<u64>, op: RegOp, ret: Option<u8>) -> Operation<RegOp, u8> {
        Operation {
            invoked,
            returned,
            op,
            ret,
        }
    }

    #[test]
    fn a_read_that_overlaps_a_write_may_see_either_value() {
        for seen in [0, 1] {
            let history = [
                op(0, Some(10), RegOp::Write(1), Some(0)),
                op(5, Some(8), RegOp::Read, Some(seen)),
            ];
            assert_eq!(
                check(&Register(0), &history, 1000),
                Verdict::Linearizable,
                "read {seen}"
            );
        }
    }

    #[test]
    fn a_read_after_an_answered_write_must_see_it() {
        let history = [
            op(0, Some(1), RegOp::Write(1), Some(0)),
            op(2, Some(3), RegOp::Read, Some(0)),
        ];
        assert!(matches!(
            check(&Register(0), &history, 1000),
            Verdict::NotLinearizable { stuck_at } if stuck_at == [1]
        ));
    }

    #[test]
    fn a_write_of_unknown_outcome_may_land_late_or_never() {
        let lost = op(0, None, RegOp::Write(7), None);
        for (read, seen) in [(2, 7), (2, 0)] {
            let history = [lost.clone(), op(read, Some(read + 1), RegOp::Read, Some(seen))];
            assert_eq!(check(&Register(0), &history, 1000), Verdict::Linearizable);
        }
        // Once seen, it stays: a later read cannot go back to the old value.
        let history = [
            lost,
            op(2, Some(3), RegOp::Read, Some(7)),
            op(4, Some(5), RegOp::Read, Some(0)),
        ];
        assert!(matches!(
            check(&Register(0), &history, 1000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_search_past_its_budget_is_inconclusive_not_a_verdict() {
        // Many concurrent writes and reads: more orders than a budget of 5 states.
        let mut history: Vec<_> = (0..12).map(|v| op(0, Some(100), RegOp::Write(v), Some(0))).collect();
        history.push(op(101, Some(102), RegOp::Read, Some(99)));
        assert_eq!(check(&Register(0), &history, 5), Verdict::Inconclusive);
        assert!(matches!(
            check(&Register(0), &history, 1_000_000),
            Verdict::NotLinearizable { .. }
        ));
    }
}
