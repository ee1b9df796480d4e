//! One term's documents in the order a bounded query reads them: best field first (a name match
//! before a description match), then by rank (registration, oldest first), so a query that may
//! read only part of a common term's documents reads its most telling ones.
//!
//! Architecture invariant: entries are sorted and distinct; a short posting is a vector (most
//! terms belong to a handful of cards), a long one a B-tree, so insert and remove stay
//! logarithmic whatever the term's frequency.

use std::collections::BTreeSet;

use super::DocKey;

/// Ranks take the low 56 bits of an entry's order; the field tier the top 8.
const RANK_BITS: u32 = 56;
/// A vector up to this length; a B-tree beyond it.
const FEW_MAX: usize = 32;
/// A B-tree that shrinks to this length becomes a vector again (below `FEW_MAX`, so a posting
/// hovering at the boundary does not convert on every change).
const FEW_AGAIN: usize = FEW_MAX / 2;

/// A document in a posting: `order` is its field tier and rank, `doc` breaks no tie (ranks are
/// distinct) but names the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub order: u64,
    pub doc: DocKey,
}

impl Entry {
    /// The entry of `doc` with `rank`, whose best field for the term is `tier` (0: the name).
    pub fn new(tier: usize, rank: u64, doc: DocKey) -> Entry {
        assert!(rank < 1 << RANK_BITS, "rank {rank} does not fit a posting entry");
        debug_assert!(tier < 256);
        Entry {
            order: ((tier as u64) << RANK_BITS) | rank,
            doc,
        }
    }
}

pub enum Posting {
    Few(Vec<Entry>),
    Many(BTreeSet<Entry>),
}

impl Posting {
    pub fn new() -> Posting {
        Posting::Few(Vec::new())
    }

    pub fn len(&self) -> usize {
        match self {
            Posting::Few(entries) => entries.len(),
            Posting::Many(entries) => entries.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn insert(&mut self, entry: Entry) {
        match self {
            Posting::Few(entries) => {
                let at = entries
                    .binary_search(&entry)
                    .expect_err("a document is posted once per term");
                entries.insert(at, entry);
                if entries.len() > FEW_MAX {
                    *self = Posting::Many(entries.drain(..).collect());
                }
            }
            Posting::Many(entries) => {
                let added = entries.insert(entry);
                assert!(added, "a document is posted once per term");
            }
        }
    }

    /// Takes `entry` out; false when it was not there.
    pub fn remove(&mut self, entry: Entry) -> bool {
        match self {
            Posting::Few(entries) => match entries.binary_search(&entry) {
                Ok(at) => {
                    entries.remove(at);
                    true
                }
                Err(_) => false,
            },
            Posting::Many(entries) => {
                let removed = entries.remove(&entry);
                if entries.len() <= FEW_AGAIN {
                    *self = Posting::Few(std::mem::take(entries).into_iter().collect());
                }
                removed
            }
        }
    }

    pub fn contains(&self, entry: Entry) -> bool {
        match self {
            Posting::Few(entries) => entries.binary_search(&entry).is_ok(),
            Posting::Many(entries) => entries.contains(&entry),
        }
    }

    /// The entries in reading order.
    pub fn iter(&self) -> Iter<'_> {
        match self {
            Posting::Few(entries) => Iter::Few(entries.iter()),
            Posting::Many(entries) => Iter::Many(entries.iter()),
        }
    }

    /// Sorted and distinct, in the shape its length calls for.
    pub fn check_invariants(&self) {
        match self {
            Posting::Few(entries) => {
                assert!(entries.len() <= FEW_MAX, "a long posting kept as a vector");
                assert!(entries.windows(2).all(|w| w[0] < w[1]), "a posting out of order");
            }
            Posting::Many(entries) => assert!(entries.len() > FEW_AGAIN, "a short posting kept as a tree"),
        }
    }
}

pub enum Iter<'a> {
    Few(std::slice::Iter<'a, Entry>),
    Many(std::collections::btree_set::Iter<'a, Entry>),
}

impl Iterator for Iter<'_> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        match self {
            Iter::Few(entries) => entries.next().copied(),
            Iter::Many(entries) => entries.next().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_posting_reads_best_tier_first_then_by_rank_in_either_shape() {
        let mut posting = Posting::new();
        for rank in (0..100u64).rev() {
            posting.insert(Entry::new((rank % 3) as usize, rank, rank as usize));
            posting.check_invariants();
        }
        assert!(matches!(posting, Posting::Many(_)));
        let order: Vec<(u64, u64)> = posting.iter().map(|e| (e.order >> RANK_BITS, e.doc as u64)).collect();
        let mut expected: Vec<(u64, u64)> = (0..100u64).map(|rank| (rank % 3, rank)).collect();
        expected.sort();
        assert_eq!(order, expected);
        for rank in 0..90u64 {
            assert!(posting.remove(Entry::new((rank % 3) as usize, rank, rank as usize)));
            posting.check_invariants();
        }
        assert!(
            matches!(posting, Posting::Few(_)),
            "a posting that shrank is a vector again"
        );
        assert_eq!(posting.len(), 10);
        assert!(!posting.remove(Entry::new(0, 0, 0)), "removing twice finds nothing");
        assert!(posting.contains(Entry::new(0, 90, 90)));
    }
}
