//! The entitlements table: ABAC policies with glob patterns, and the index that answers a check
//! without scanning every policy.
//!
//! Architecture invariant: a check visits only the policies whose indexed literal anchor fits the
//! query, never the whole table; DENY beats ALLOW and ties name the smallest id, so the answer
//! never depends on storage order.
//!
//! The index: each policy is filed under one *anchor*, the longest literal run among six
//! candidates: for each of subject, action and resource, the literal prefix before its first `*`
//! and the literal suffix after its last `*`. A field with no `*` is anchored exactly (its whole
//! text). A query can only match a policy whose anchor is the query's field itself (exact), a
//! prefix of it, or a suffix of it, so a check looks up the query field's whole text and each of
//! its prefixes and suffixes whose length some anchor actually has (kept as a count per length),
//! then verifies the few candidates with `glob_match`. With realistic tables (mostly literal
//! `agent:<name>` subjects, a sprinkling of `agent:*`, `tool:*`, `*`), a check touches a handful
//! of policies whatever the table size. The adversarial worst case, a million policies that are
//! all `*`/`*`/`*` (or that share one short anchor), puts them in one bucket and a check then
//! verifies them all: they all match the same queries anyway, and the limit on policies bounds it.

use std::collections::{BTreeMap, btree_map};
use std::sync::Arc;

use slab::Slab;

use super::listing::Page;
use super::types::{Decision, Effect, Map, Policy, new_map};

/// Policies one page of ListPolicies looks at, at most: a subject prefix that few policies match
/// cannot make a page walk the whole table.
pub const POLICY_SCAN_MAX: usize = 4096;

/// Which part of a field an anchor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AnchorKind {
    /// The whole field: it has no `*`.
    Exact,
    /// The literal run before the first `*`.
    Prefix,
    /// The literal run after the last `*`.
    Suffix,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Anchor {
    field: usize,
    kind: AnchorKind,
    text: Box<str>,
}

/// The buckets of one field: exact texts, prefixes and suffixes, with a count of anchors per
/// prefix and suffix length so a check only tries lengths that exist.
struct FieldIndex {
    exact: Map<Box<str>, Vec<usize>>,
    prefix: Map<Box<str>, Vec<usize>>,
    suffix: Map<Box<str>, Vec<usize>>,
    prefix_lengths: BTreeMap<usize, usize>,
    suffix_lengths: BTreeMap<usize, usize>,
}

impl FieldIndex {
    fn new(hash_seed: u64) -> Self {
        FieldIndex {
            exact: new_map(hash_seed),
            prefix: new_map(hash_seed),
            suffix: new_map(hash_seed),
            prefix_lengths: BTreeMap::new(),
            suffix_lengths: BTreeMap::new(),
        }
    }

    fn bucket_mut(&mut self, kind: AnchorKind) -> &mut Map<Box<str>, Vec<usize>> {
        match kind {
            AnchorKind::Exact => &mut self.exact,
            AnchorKind::Prefix => &mut self.prefix,
            AnchorKind::Suffix => &mut self.suffix,
        }
    }

    fn lengths_mut(&mut self, kind: AnchorKind) -> Option<&mut BTreeMap<usize, usize>> {
        match kind {
            AnchorKind::Exact => None,
            AnchorKind::Prefix => Some(&mut self.prefix_lengths),
            AnchorKind::Suffix => Some(&mut self.suffix_lengths),
        }
    }

    /// Files `key` under its anchor; returns its position in the bucket.
    fn insert(&mut self, kind: AnchorKind, text: &str, key: usize) -> usize {
        let bucket = self.bucket_mut(kind).entry(text.into()).or_default();
        bucket.push(key);
        let position = bucket.len() - 1;
        if let Some(lengths) = self.lengths_mut(kind) {
            *lengths.entry(text.len()).or_default() += 1;
        }
        position
    }

    /// Takes the policy at `position` of its bucket out in O(1); returns the key moved into that
    /// position (the bucket's last), whose entry must learn its new position.
    fn remove(&mut self, kind: AnchorKind, text: &str, position: usize) -> Option<usize> {
        let buckets = self.bucket_mut(kind);
        let bucket = buckets.get_mut(text).expect("an indexed policy has its bucket");
        bucket.swap_remove(position);
        let moved = bucket.get(position).copied();
        if bucket.is_empty() {
            buckets.remove(text);
        }
        if let Some(lengths) = self.lengths_mut(kind) {
            let count = lengths.get_mut(&text.len()).expect("an anchor length is counted");
            *count -= 1;
            if *count == 0 {
                lengths.remove(&text.len());
            }
        }
        moved
    }

    /// Calls `visit` with every policy whose anchor in this field fits `query`.
    fn candidates(&self, query: &str, mut visit: impl FnMut(usize)) {
        let mut bucket = |map: &Map<Box<str>, Vec<usize>>, text: &str| {
            if let Some(keys) = map.get(text) {
                keys.iter().for_each(|&k| visit(k));
            }
        };
        bucket(&self.exact, query);
        for &len in self.prefix_lengths.keys().take_while(|&&len| len <= query.len()) {
            if query.is_char_boundary(len) {
                bucket(&self.prefix, &query[..len]);
            }
        }
        for &len in self.suffix_lengths.keys().take_while(|&&len| len <= query.len()) {
            let start = query.len() - len;
            if query.is_char_boundary(start) {
                bucket(&self.suffix, &query[start..]);
            }
        }
    }

    fn len(&self) -> usize {
        [&self.exact, &self.prefix, &self.suffix]
            .iter()
            .map(|m| m.values().map(Vec::len).sum::<usize>())
            .sum()
    }
}

struct Entry {
    /// Shared with the pages that list it: a page of policies copies pointers, not strings.
    policy: Arc<Policy>,
    anchor: Anchor,
    /// Where it is in its anchor's bucket: a replace or a delete takes it out in O(1), however
    /// many policies share the anchor.
    position: usize,
}

/// The policies, by id, with the check index.
pub struct PolicyTable {
    entries: Slab<Entry>,
    /// Ids in order: lookups, upserts and sorted listing.
    by_id: BTreeMap<String, usize>,
    fields: [FieldIndex; 3],
}

fn fields_of(policy: &Policy) -> [&str; 3] {
    [&policy.subject, &policy.action, &policy.resource]
}

/// The longest literal run among the policy's six candidate anchors (ties: earlier field, then
/// exact over prefix over suffix), so similar policies spread over many buckets.
fn anchor_of(policy: &Policy) -> Anchor {
    let mut best: Option<Anchor> = None;
    for (field, pattern) in fields_of(policy).into_iter().enumerate() {
        let options = match (pattern.find('*'), pattern.rfind('*')) {
            (None, _) => vec![(AnchorKind::Exact, pattern)],
            (Some(first), Some(last)) => {
                vec![
                    (AnchorKind::Prefix, &pattern[..first]),
                    (AnchorKind::Suffix, &pattern[last + 1..]),
                ]
            }
            (Some(_), None) => unreachable!("find and rfind agree on whether `*` occurs"),
        };
        for (kind, text) in options {
            // An exact anchor is worth more than an affix of the same length: it matches one text.
            let weight = |a: AnchorKind, len: usize| 2 * len + usize::from(a == AnchorKind::Exact);
            if best
                .as_ref()
                .is_none_or(|b| weight(kind, text.len()) > weight(b.kind, b.text.len()))
            {
                best = Some(Anchor {
                    field,
                    kind,
                    text: text.into(),
                });
            }
        }
    }
    best.expect("a policy has three fields")
}

impl PolicyTable {
    pub fn new(hash_seed: u64) -> Self {
        PolicyTable {
            entries: Slab::new(),
            by_id: BTreeMap::new(),
            fields: [
                FieldIndex::new(hash_seed),
                FieldIndex::new(hash_seed),
                FieldIndex::new(hash_seed),
            ],
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Policy> {
        self.by_id.get(id).map(|&key| &*self.entries[key].policy)
    }

    /// Inserts or replaces the policy with this id (shared with the caller's answer when it
    /// comes as an `Arc`); returns the replaced one.
    pub fn upsert(&mut self, policy: impl Into<Arc<Policy>>) -> Option<Policy> {
        let policy = policy.into();
        let anchor = anchor_of(&policy);
        let id = policy.id.clone();
        let entry = Entry {
            policy,
            anchor,
            position: 0,
        };
        // One search of the ordered ids, whether the policy is new or replaces one (in place).
        let (key, replaced) = match self.by_id.entry(id) {
            btree_map::Entry::Occupied(slot) => {
                let key = *slot.get();
                (key, Some(std::mem::replace(&mut self.entries[key], entry)))
            }
            btree_map::Entry::Vacant(slot) => (*slot.insert(self.entries.insert(entry)), None),
        };
        if let Some(old) = &replaced {
            self.unfile(old);
        }
        let anchor = &self.entries[key].anchor;
        let position = self.fields[anchor.field].insert(anchor.kind, &anchor.text, key);
        self.entries[key].position = position;
        debug_assert_eq!(self.by_id.len(), self.entries.len());
        replaced.map(|old| Arc::unwrap_or_clone(old.policy))
    }

    pub fn remove(&mut self, id: &str) -> Option<Policy> {
        let key = self.by_id.remove(id)?;
        let entry = self.entries.remove(key);
        self.unfile(&entry);
        Some(Arc::unwrap_or_clone(entry.policy))
    }

    /// Takes `entry`, no longer in `entries` at its key, out of its anchor's bucket in O(1); the
    /// policy moved into its place there learns its new position.
    fn unfile(&mut self, entry: &Entry) {
        let index = &mut self.fields[entry.anchor.field];
        if let Some(moved) = index.remove(entry.anchor.kind, &entry.anchor.text, entry.position) {
            self.entries[moved].position = entry.position;
        }
    }

    /// Every policy whose subject pattern starts with `subject_prefix`, sorted by id: O(table),
    /// for the simulator and tests, never a command.
    pub fn list(&self, subject_prefix: &str) -> Vec<Policy> {
        self.by_id
            .values()
            .map(|&key| &self.entries[key].policy)
            .filter(|policy| policy.subject.starts_with(subject_prefix))
            .map(|policy| Policy::clone(policy))
            .collect()
    }

    /// Policies by id after `after`, whose subject pattern starts with `subject_prefix`: at most
    /// `limit`, looking at no more than `POLICY_SCAN_MAX` policies, so a narrow prefix over a big
    /// table answers a short page (even an empty one) whose `next` goes on from where it stopped.
    pub fn page(&self, subject_prefix: &str, after: Option<&str>, limit: usize) -> Page<Arc<Policy>> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Page::new();
        let mut last: Option<&str> = None;
        if limit == 0 {
            return page;
        }
        for (id, &key) in self.by_id.range::<str, _>((start, Bound::Unbounded)) {
            if page.items.len() == limit || page.examined == POLICY_SCAN_MAX {
                page.next = last.map(str::to_string);
                break;
            }
            page.examined += 1;
            last = Some(id);
            let policy = &self.entries[key].policy;
            if policy.subject.starts_with(subject_prefix) {
                page.items.push(Arc::clone(policy));
            }
        }
        debug_assert!(page.items.len() <= limit && page.examined <= POLICY_SCAN_MAX);
        page
    }

    pub fn check(&self, subject: &str, action: &str, resource: &str) -> Decision {
        self.check_counting(subject, action, resource).0
    }

    /// The decision and how many candidates it verified (the measure of "does not scan").
    pub fn check_counting(&self, subject: &str, action: &str, resource: &str) -> (Decision, usize) {
        let query = [subject, action, resource];
        let mut deny: Option<&str> = None;
        let mut allow: Option<&str> = None;
        let mut examined = 0;
        for (field, index) in self.fields.iter().enumerate() {
            index.candidates(query[field], |key| {
                examined += 1;
                let policy = &self.entries[key].policy;
                let matches = fields_of(policy)
                    .iter()
                    .zip(query)
                    .all(|(pattern, text)| glob_match(pattern, text));
                if !matches {
                    return;
                }
                let best = match policy.effect {
                    Effect::Deny => &mut deny,
                    Effect::Allow => &mut allow,
                };
                if best.is_none_or(|id| policy.id.as_str() < id) {
                    *best = Some(&policy.id);
                }
            });
        }
        let decision = match (deny, allow) {
            (Some(id), _) => Decision {
                allowed: false,
                reason: format!("denied by policy \"{id}\""),
            },
            (None, Some(id)) => Decision {
                allowed: true,
                reason: format!("allowed by policy \"{id}\""),
            },
            (None, None) => Decision {
                allowed: false,
                reason: "no matching policy: default deny".to_string(),
            },
        };
        (decision, examined)
    }

    pub fn check_invariants(&self) {
        assert_eq!(self.by_id.len(), self.entries.len(), "policy id index size");
        let indexed: usize = self.fields.iter().map(FieldIndex::len).sum();
        assert_eq!(
            indexed,
            self.entries.len(),
            "every policy is filed under exactly one anchor"
        );
        for (id, &key) in &self.by_id {
            let entry = &self.entries[key];
            assert_eq!(&entry.policy.id, id, "policy {id:?} filed under another id");
            assert_eq!(entry.anchor, anchor_of(&entry.policy), "policy {id:?} anchor is stale");
            let index = &self.fields[entry.anchor.field];
            let bucket = match entry.anchor.kind {
                AnchorKind::Exact => &index.exact,
                AnchorKind::Prefix => &index.prefix,
                AnchorKind::Suffix => &index.suffix,
            };
            let filed = (bucket.get(&*entry.anchor.text)).is_some_and(|keys| keys.get(entry.position) == Some(&key));
            assert!(filed, "policy {id:?} missing from its bucket at its position");
        }
    }
}

/// Glob match where `*` matches any run of bytes (the empty run and `:` included) and every
/// other byte is literal. Greedy with backtracking to the last star: O(pattern x text) at worst,
/// no recursion.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last star was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(id: &str, subject: &str, action: &str, resource: &str, effect: Effect) -> Policy {
        Policy {
            id: id.into(),
            subject: subject.into(),
            action: action.into(),
            resource: resource.into(),
            effect,
        }
    }

    #[test]
    fn policies_sharing_one_anchor_are_replaced_and_deleted_in_any_order_and_stay_filed() {
        // Every policy is anchored on one exact text: one bucket holds them all.
        let mut table = PolicyTable::new(7);
        let mut live: Vec<Policy> = Vec::new();
        for i in 0..60 {
            let effect = if i % 7 == 3 { Effect::Deny } else { Effect::Allow };
            let p = policy(&format!("p{i:02}"), "svc", "read", "*", effect);
            table.upsert(p.clone());
            live.push(p);
        }
        table.check_invariants();
        let largest = (table.fields.iter())
            .flat_map(|field| field.exact.values())
            .map(Vec::len)
            .max();
        assert_eq!(largest, Some(60), "one bucket holds them all");
        // Out of the middle, the front and the back, replaced and deleted alike.
        for i in [30, 0, 59, 17, 45, 1, 58] {
            let id = format!("p{i:02}");
            if i % 2 == 0 {
                assert!(table.remove(&id).is_some());
                live.retain(|p| p.id != id);
            } else {
                let p = policy(&id, "svc", "write", "*", Effect::Deny);
                assert!(table.upsert(p.clone()).is_some());
                live.retain(|q| q.id != id);
                live.push(p);
            }
            table.check_invariants();
        }
        assert_eq!(table.len(), live.len());
        for i in 0..60 {
            for action in ["read", "write"] {
                let resource = format!("doc:{i}");
                assert_eq!(
                    table.check("svc", action, &resource),
                    brute_force(&live, "svc", action, &resource),
                    "{action} {resource}"
                );
            }
        }
    }

    /// The contract, evaluated the slow way over every policy.
    fn brute_force(policies: &[Policy], subject: &str, action: &str, resource: &str) -> Decision {
        let matching = |effect| {
            policies
                .iter()
                .filter(|p| p.effect == effect)
                .filter(|p| glob_match(&p.subject, subject) && glob_match(&p.action, action))
                .filter(|p| glob_match(&p.resource, resource))
                .map(|p| p.id.clone())
                .min()
        };
        match (matching(Effect::Deny), matching(Effect::Allow)) {
            (Some(id), _) => Decision {
                allowed: false,
                reason: format!("denied by policy \"{id}\""),
            },
            (None, Some(id)) => Decision {
                allowed: true,
                reason: format!("allowed by policy \"{id}\""),
            },
            (None, None) => Decision {
                allowed: false,
                reason: "no matching policy: default deny".into(),
            },
        }
    }

    #[test]
    fn glob_star_matches_empty_runs_colons_and_many_stars() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "a:b:c"));
        assert!(glob_match("agent:*", "agent:"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "a:x:b:y:c"));
        assert!(glob_match("*:admin", "tool:db:admin"));
        assert!(glob_match("**", "x"));
        assert!(!glob_match("a*b", "a:c"));
        assert!(!glob_match("abc", "abcd"));
        assert!(!glob_match("abc", "ab"));
        assert!(!glob_match("", "a"));
        assert!(glob_match("", ""));
    }

    #[test]
    fn glob_is_case_sensitive_and_literal_outside_stars() {
        assert!(!glob_match("Agent:*", "agent:x"));
        assert!(!glob_match("a?c", "abc"), "only * is special");
        assert!(glob_match("a?c", "a?c"));
        assert!(glob_match("tool:é*", "tool:été"));
    }

    #[test]
    fn glob_pathological_pattern_finishes_fast() {
        let text = "a".repeat(1024);
        let pattern = "a*".repeat(100) + "b";
        assert!(!glob_match(&pattern, &text));
        assert!(glob_match(&("a*".repeat(100)), &text));
    }

    #[test]
    fn deny_beats_allow_and_the_smallest_id_is_named() {
        let mut table = PolicyTable::new(1);
        table.upsert(policy("z-allow", "agent:*", "call", "tool:*", Effect::Allow));
        table.upsert(policy("b-allow", "*", "*", "*", Effect::Allow));
        assert_eq!(
            table.check("agent:x", "call", "tool:y").reason,
            "allowed by policy \"b-allow\""
        );
        table.upsert(policy("m-deny", "agent:x", "call", "tool:y", Effect::Deny));
        table.upsert(policy("k-deny", "agent:*", "*", "tool:y", Effect::Deny));
        let decision = table.check("agent:x", "call", "tool:y");
        assert_eq!(
            (decision.allowed, decision.reason.as_str()),
            (false, "denied by policy \"k-deny\"")
        );
        let none = PolicyTable::new(1).check("a", "b", "c");
        assert_eq!(
            (none.allowed, none.reason.as_str()),
            (false, "no matching policy: default deny")
        );
    }

    #[test]
    fn upsert_replaces_the_old_pattern_and_remove_forgets() {
        let mut table = PolicyTable::new(1);
        assert!(table.upsert(policy("p", "a", "b", "c", Effect::Allow)).is_none());
        let old = table.upsert(policy("p", "*:x", "b", "c", Effect::Allow));
        assert_eq!(old.map(|p| p.subject), Some("a".to_string()));
        assert!(!table.check("a", "b", "c").allowed, "the old pattern no longer matches");
        assert!(table.check("q:x", "b", "c").allowed);
        table.check_invariants();
        assert!(table.remove("p").is_some());
        assert!(table.remove("p").is_none());
        assert!(table.is_empty());
        table.check_invariants();
    }

    #[test]
    fn list_is_sorted_by_id_and_filtered_by_subject_prefix() {
        let mut table = PolicyTable::new(1);
        for (id, subject) in [("c", "agent:b"), ("a", "user:x"), ("b", "agent:a"), ("d", "agent*")] {
            table.upsert(policy(id, subject, "x", "y", Effect::Allow));
        }
        let ids = |list: Vec<Policy>| list.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids(table.list("")), ["a", "b", "c", "d"]);
        assert_eq!(ids(table.list("agent:")), ["b", "c"], "a plain prefix, not a glob");
    }

    #[test]
    fn a_check_examines_a_handful_of_candidates_among_100k_policies() {
        let mut table = PolicyTable::new(7);
        for i in 0..100_000 {
            let effect = if i % 10 == 0 { Effect::Deny } else { Effect::Allow };
            table.upsert(policy(
                &format!("p{i}"),
                &format!("agent:a{i}"),
                "call",
                &format!("tool:t{}", i % 50),
                effect,
            ));
        }
        table.upsert(policy("wild-1", "agent:*", "read", "*", Effect::Allow));
        table.upsert(policy("wild-2", "*", "*", "tool:admin", Effect::Deny));
        table.upsert(policy("wild-3", "*:root", "*", "*", Effect::Deny));
        let (decision, examined) = table.check_counting("agent:a77", "call", "tool:t27");
        assert_eq!(decision.reason, "allowed by policy \"p77\"");
        assert!(examined <= 5, "examined {examined} candidates");
        let (decision, examined) = table.check_counting("agent:a70", "read", "tool:admin");
        assert_eq!(decision.reason, "denied by policy \"wild-2\"");
        assert!(examined <= 5, "examined {examined} candidates");
    }

    fn pattern() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[ab:*]{0,5}")
            .expect("valid regex")
            .prop_filter("non-empty", |s| !s.is_empty())
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[ab:]{0,6}").expect("valid regex")
    }

    #[derive(Clone, Debug)]
    enum Op {
        Upsert(Policy),
        Remove(String),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = || proptest::string::string_regex("[a-e]").expect("valid regex");
        let effect = prop_oneof![Just(Effect::Allow), Just(Effect::Deny)];
        prop_oneof![
            3 => (id(), pattern(), pattern(), pattern(), effect)
                .prop_map(|(id, s, a, r, e): (String, String, String, String, Effect)| {
                    Op::Upsert(policy(&id, &s, &a, &r, e))
                }),
            1 => id().prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn check_equals_brute_force_over_random_tables(
            ops in proptest::collection::vec(op(), 1..40),
            queries in proptest::collection::vec((text(), text(), text()), 1..20),
        ) {
            let mut table = PolicyTable::new(3);
            let mut reference: Vec<Policy> = Vec::new();
            for op in ops {
                match op {
                    Op::Upsert(p) => {
                        reference.retain(|q| q.id != p.id);
                        reference.push(p.clone());
                        table.upsert(p);
                    }
                    Op::Remove(id) => {
                        reference.retain(|q| q.id != id);
                        table.remove(&id);
                    }
                }
                table.check_invariants();
                prop_assert_eq!(table.len(), reference.len());
            }
            for (s, a, r) in queries {
                prop_assert_eq!(table.check(&s, &a, &r), brute_force(&reference, &s, &a, &r));
            }
        }
    }
}
