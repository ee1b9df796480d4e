//! The sequential model of a few policies that all match one request (one subject, action and
//! resource), so that every SetPolicy, DeletePolicy and CheckPolicy of a history touches one key:
//! a check is denied by any DENY, allowed by any ALLOW, denied by default (as the daemon decides).
//!
//! Architecture invariant: a pure value; the ids are indexes into a fixed array, so a state is
//! small and hashes the same everywhere.

use crate::Model;

/// How many policy ids a history may use.
pub const POLICY_IDS_MAX: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug)]
pub enum PolicyOp {
    /// SetPolicy of id `.0` (below `POLICY_IDS_MAX`) with an effect: an upsert.
    Set(usize, Effect),
    Delete(usize),
    Check,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PolicyRet {
    Done,
    NotFound,
    Allowed(bool),
}

/// Each id's effect, if set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Policies([Option<Effect>; POLICY_IDS_MAX]);

impl Model for Policies {
    type Op = PolicyOp;
    type Ret = PolicyRet;
    fn step(&self, op: &PolicyOp) -> (Policies, PolicyRet) {
        let mut next = self.clone();
        let ret = match op {
            PolicyOp::Set(id, effect) => {
                next.0[*id] = Some(*effect);
                PolicyRet::Done
            }
            PolicyOp::Delete(id) => match next.0[*id].take() {
                Some(_) => PolicyRet::Done,
                None => PolicyRet::NotFound,
            },
            PolicyOp::Check => {
                let deny = self.0.contains(&Some(Effect::Deny));
                PolicyRet::Allowed(!deny && self.0.contains(&Some(Effect::Allow)))
            }
        };
        (next, ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Operation, Verdict, check};

    fn op(invoked: u64, returned: u64, op: PolicyOp, ret: PolicyRet) -> Operation<PolicyOp, PolicyRet> {
        Operation {
            invoked,
            returned: Some(returned),
            op,
            ret: Some(ret),
        }
    }

    #[test]
    fn any_deny_wins_over_an_allow_and_nothing_set_denies() {
        let (_, allowed) = Policies::default().step(&PolicyOp::Check);
        assert_eq!(allowed, PolicyRet::Allowed(false));
        let (one, _) = Policies::default().step(&PolicyOp::Set(0, Effect::Allow));
        assert_eq!(one.step(&PolicyOp::Check).1, PolicyRet::Allowed(true));
        let (two, _) = one.step(&PolicyOp::Set(2, Effect::Deny));
        assert_eq!(two.step(&PolicyOp::Check).1, PolicyRet::Allowed(false));
        assert_eq!(two.step(&PolicyOp::Delete(1)).1, PolicyRet::NotFound);
    }

    #[test]
    fn a_check_that_misses_a_deny_set_before_it_began_is_caught() {
        let history = [
            op(0, 1, PolicyOp::Set(0, Effect::Allow), PolicyRet::Done),
            op(2, 3, PolicyOp::Set(1, Effect::Deny), PolicyRet::Done),
            op(4, 5, PolicyOp::Check, PolicyRet::Allowed(true)),
        ];
        assert!(matches!(
            check(&Policies::default(), &history, 1000),
            Verdict::NotLinearizable { stuck_at } if stuck_at == [2]
        ));
        // Begun before the DENY was answered, it may come first.
        let mut overlapping = history.clone();
        overlapping[2].invoked = 2;
        assert_eq!(check(&Policies::default(), &overlapping, 1000), Verdict::Linearizable);
    }
}
