//! PLACEHOLDER (replaced by the real index).
use super::types::{Decision, Effect, Policy};
use std::collections::BTreeMap;
pub struct PolicyTable {
    by_id: BTreeMap<String, Policy>,
}
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}
impl PolicyTable {
    pub fn new(_hash_seed: u64) -> Self {
        PolicyTable { by_id: BTreeMap::new() }
    }
    pub fn upsert(&mut self, policy: Policy) -> Option<Policy> {
        self.by_id.insert(policy.id.clone(), policy)
    }
    pub fn remove(&mut self, id: &str) -> Option<Policy> {
        self.by_id.remove(id)
    }
    pub fn get(&self, id: &str) -> Option<&Policy> {
        self.by_id.get(id)
    }
    pub fn list(&self, subject_prefix: &str) -> Vec<Policy> {
        self.by_id
            .values()
            .filter(|p| p.subject.starts_with(subject_prefix))
            .cloned()
            .collect()
    }
    pub fn check(&self, subject: &str, action: &str, resource: &str) -> Decision {
        let m = |p: &&Policy| {
            glob_match(&p.subject, subject) && glob_match(&p.action, action) && glob_match(&p.resource, resource)
        };
        if let Some(p) = self.by_id.values().filter(m).find(|p| p.effect == Effect::Deny) {
            return Decision {
                allowed: false,
                reason: format!("denied by policy \"{}\"", p.id),
            };
        }
        if let Some(p) = self.by_id.values().filter(m).find(|p| p.effect == Effect::Allow) {
            return Decision {
                allowed: true,
                reason: format!("allowed by policy \"{}\"", p.id),
            };
        }
        Decision {
            allowed: false,
            reason: "no matching policy: default deny".into(),
        }
    }
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
    pub fn check_invariants(&self) {}
}
