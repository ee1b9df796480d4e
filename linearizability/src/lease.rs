//! The sequential model of one lease key: AcquireLease, RenewLease and ReleaseLease by agents
//! (numbered by whoever records the history), with fencing tokens. The daemon picks a grant's
//! token and the contract only says tokens rise, so the model takes the token an answer names
//! for a new grant if it is above every token granted on this key before, and remembers it.
//!
//! Architecture invariant: a pure value, and no expiry: a history is recorded with TTLs that
//! outlast it, so a lease ends only by a release.

use crate::Model;

/// An agent, as the recorder numbers them.
pub type AgentNo = u32;

#[derive(Clone, Debug)]
pub enum LeaseOp {
    /// `seen`: the token the answer named (the one granted, or the holder's), when an answer
    /// came. For a new grant it is the daemon's free choice above the floor; for a grant whose
    /// answer never came, it is how a later answer tells the token nobody saw.
    Acquire {
        agent: AgentNo,
        seen: Option<u64>,
    },
    Renew {
        agent: AgentNo,
        token: u64,
    },
    Release {
        agent: AgentNo,
        token: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum LeaseRet {
    /// `acquired = true` with this token (new, or the caller's own: re-entrant).
    Granted(u64),
    /// `acquired = false`: another agent holds it with this token.
    HeldBy(AgentNo, u64),
    /// A renewal or a release went through.
    Done,
    /// PERMISSION_DENIED: another holder, or another token.
    Denied,
    /// NOT_FOUND: nobody holds the lease.
    NotFound,
    /// What no daemon may answer: a token that is not above the tokens granted before it.
    TokenNotRising(u64),
}

/// One key's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The holder and its token; the token is None after a grant whose answer never came,
    /// until another answer names it.
    holder: Option<(AgentNo, Option<u64>)>,
    /// The highest token granted on this key so far.
    floor: u64,
}

impl Lease {
    fn acquire(&self, agent: AgentNo, seen: Option<u64>) -> (Lease, LeaseRet) {
        let mut next = self.clone();
        let rising = seen.filter(|token| *token > self.floor);
        let Some((holder, token)) = self.holder else {
            next.holder = Some((agent, rising));
            next.floor = rising.unwrap_or(self.floor);
            return match (seen, rising) {
                (_, Some(token)) => (next, LeaseRet::Granted(token)),
                (Some(token), None) => (self.clone(), LeaseRet::TokenNotRising(token)),
                // No answer: the model's own answer is compared with nothing.
                (None, None) => (next, LeaseRet::Granted(0)),
            };
        };
        // A token nobody saw yet was above the floor when granted; the floor has not moved
        // since (the lease was held all along), so the answer's token must be above it too.
        let token = match (token, seen) {
            (Some(token), _) => token,
            (None, Some(seen)) => match rising {
                Some(token) => {
                    next.holder = Some((holder, Some(token)));
                    next.floor = token;
                    token
                }
                None => return (self.clone(), LeaseRet::TokenNotRising(seen)),
            },
            (None, None) => 0,
        };
        match holder == agent {
            true => (next, LeaseRet::Granted(token)),
            false => (next, LeaseRet::HeldBy(holder, token)),
        }
    }

    /// Whether `agent` holds the lease with `token`. A token nobody saw cannot be the one a
    /// caller sends (a recorder renews and releases only with tokens answers named).
    fn held_by(&self, agent: AgentNo, token: u64) -> Result<(), LeaseRet> {
        match self.holder {
            None => Err(LeaseRet::NotFound),
            Some((holder, Some(held))) if holder == agent && held == token => Ok(()),
            Some(_) => Err(LeaseRet::Denied),
        }
    }
}

impl Model for Lease {
    type Op = LeaseOp;
    type Ret = LeaseRet;
    fn step(&self, op: &LeaseOp) -> (Lease, LeaseRet) {
        match *op {
            LeaseOp::Acquire { agent, seen } => self.acquire(agent, seen),
            LeaseOp::Renew { agent, token } => match self.held_by(agent, token) {
                Ok(()) => (self.clone(), LeaseRet::Done),
                Err(refused) => (self.clone(), refused),
            },
            LeaseOp::Release { agent, token } => match self.held_by(agent, token) {
                Ok(()) => {
                    let mut next = self.clone();
                    next.holder = None;
                    (next, LeaseRet::Done)
                }
                Err(refused) => (self.clone(), refused),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Operation, Verdict, check};

    fn answered(invoked: u64, returned: u64, op: LeaseOp, ret: LeaseRet) -> Operation<LeaseOp, LeaseRet> {
        Operation {
            invoked,
            returned: Some(returned),
            op,
            ret: Some(ret),
        }
    }

    fn acquire(agent: AgentNo, seen: u64) -> LeaseOp {
        LeaseOp::Acquire {
            agent,
            seen: Some(seen),
        }
    }

    fn verdict(history: &[Operation<LeaseOp, LeaseRet>]) -> Verdict {
        check(&Lease::default(), history, 100_000)
    }

    #[test]
    fn a_lease_granted_released_and_granted_again_with_a_higher_token_linearizes() {
        let history = [
            answered(0, 1, acquire(1, 5), LeaseRet::Granted(5)),
            answered(2, 3, acquire(2, 5), LeaseRet::HeldBy(1, 5)),
            answered(2, 4, LeaseOp::Renew { agent: 1, token: 5 }, LeaseRet::Done),
            answered(5, 6, LeaseOp::Release { agent: 1, token: 5 }, LeaseRet::Done),
            answered(7, 8, LeaseOp::Renew { agent: 1, token: 5 }, LeaseRet::NotFound),
            answered(7, 9, acquire(2, 9), LeaseRet::Granted(9)),
            answered(10, 11, LeaseOp::Release { agent: 1, token: 5 }, LeaseRet::Denied),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn two_agents_granted_one_lease_at_once_are_caught() {
        let history = [
            answered(0, 10, acquire(1, 5), LeaseRet::Granted(5)),
            answered(1, 11, acquire(2, 6), LeaseRet::Granted(6)),
        ];
        assert!(matches!(verdict(&history), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_grant_whose_token_does_not_rise_is_caught() {
        let history = [
            answered(0, 1, acquire(1, 7), LeaseRet::Granted(7)),
            answered(2, 3, LeaseOp::Release { agent: 1, token: 7 }, LeaseRet::Done),
            answered(4, 5, acquire(2, 7), LeaseRet::Granted(7)),
        ];
        assert!(matches!(
            verdict(&history),
            Verdict::NotLinearizable { stuck_at } if stuck_at == [2]
        ));
    }

    #[test]
    fn a_grant_whose_answer_never_came_may_hold_the_lease_and_a_later_answer_names_its_token() {
        let lost = Operation {
            invoked: 0,
            returned: None,
            op: LeaseOp::Acquire { agent: 1, seen: None },
            ret: None,
        };
        let held = answered(2, 3, acquire(2, 4), LeaseRet::HeldBy(1, 4));
        let regranted = answered(4, 5, acquire(1, 4), LeaseRet::Granted(4));
        let history = [lost.clone(), held.clone(), regranted.clone()];
        assert_eq!(verdict(&history), Verdict::Linearizable);
        // Without the lost call, nobody could have held it.
        assert!(matches!(
            verdict(&[held.clone(), regranted]),
            Verdict::NotLinearizable { .. }
        ));
        // Once named, the token is that one.
        let other_token = answered(4, 5, acquire(1, 8), LeaseRet::Granted(8));
        assert!(matches!(
            verdict(&[lost, held, other_token]),
            Verdict::NotLinearizable { .. }
        ));
    }
}
