//! The hybrid Find's top k: BM25F scores fused with the cosines of a model's distinct card
//! vectors (each scored once however many cards share it), expanded lazily to the documents
//! that reference each vector, best first, ties by rank, until `limit` are accepted.
//!
//! Architecture invariant: the answer is exactly `fuse` over every document's cosine followed
//! by the first `limit` accepted in (score descending, rank ascending) order: the same scores, bit
//! for bit, and the same order; only the work differs. It never walks a vector's replicas past
//! those it answers (plus the lexical candidates it skips and the refused ones it steps over).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::DocKey;
use super::vectors::VectorIndex;
use crate::core::types::{Set, new_set};

/// Marks a lexical candidate among the heap's entries (a vector's entries carry its slot).
const LEXICAL: u32 = u32::MAX;
/// Vectors put in the heap at first at least (twice the limit otherwise), chosen by a selection
/// over all those scanned: a bigger heap only when the answer reaches past them.
const HEAD_MIN: usize = 32;

/// A candidate for the next place: a lexical document, or a vector's next document by rank.
#[derive(Clone, Copy)]
struct Next {
    score: f64,
    rank: u64,
    doc: DocKey,
    slot: u32,
}

impl Ord for Next {
    /// The better is the greater: a higher score, then a lower rank (then a lower key).
    fn cmp(&self, other: &Next) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.rank.cmp(&self.rank))
            .then_with(|| other.doc.cmp(&self.doc))
    }
}

impl PartialOrd for Next {
    fn partial_cmp(&self, other: &Next) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Next {
    fn eq(&self, other: &Next) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Next {}

/// The best `limit` documents, best first (ties by `rank_of`), among `lexical` (each accepted,
/// score > 0) and the documents of `space`'s vectors scored in `cosines` (slot, cosine),
/// `accept` asked of the latter as they come up: `lexical_weight` x score / best score + (1 -
/// `lexical_weight`) x the cosine min-max scaled over `cosines`, as `fuse` computes it.
#[allow(clippy::too_many_arguments)]
pub fn best(
    lexical: Vec<(DocKey, f64)>,
    space: &VectorIndex,
    cosines: &[(u32, f32)],
    lexical_weight: f64,
    limit: usize,
    rank_of: impl Fn(DocKey) -> u64,
    accept: impl Fn(DocKey) -> bool,
    hash_seed: u64,
) -> Vec<(DocKey, f64)> {
    if limit == 0 {
        return Vec::new();
    }
    let (low, high) = cosines
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &(_, c)| (lo.min(c), hi.max(c)));
    let (low, spread) = (f64::from(low), f64::from(high - low).max(1e-9));
    let semantic = |cosine: f32| (1.0 - lexical_weight) * (f64::from(cosine) - low) / spread;
    // Each slot's cosine, where scanned (NaN: free, or past the scan's bound).
    let mut by_slot: Vec<f32> = Vec::new();
    if !lexical.is_empty() {
        let slots = cosines.last().map_or(0, |&(slot, _)| slot as usize + 1);
        by_slot.resize(slots, f32::NAN);
        for &(slot, cosine) in cosines {
            by_slot[slot as usize] = cosine;
        }
    }
    let best_lexical = lexical.iter().map(|d| d.1).fold(0.0, f64::max);
    let mut words: Set<DocKey> = new_set(hash_seed);
    let mut heap: Vec<Next> = Vec::with_capacity(lexical.len() + 2 * HEAD_MIN);
    for (doc, score) in lexical {
        words.insert(doc);
        let word_score = lexical_weight * score / best_lexical;
        let cosine = space
            .slot_of(doc)
            .and_then(|slot| by_slot.get(slot as usize))
            .filter(|c| !c.is_nan());
        let score = match cosine {
            Some(&cosine) => word_score + semantic(cosine),
            None => word_score,
        };
        heap.push(Next {
            score,
            rank: rank_of(doc),
            doc,
            slot: LEXICAL,
        });
    }
    let mut heap = BinaryHeap::from(heap);
    // Each vector's score and slot; its first document comes from the slot's head.
    let mut vectors: Vec<(f64, u32)> = cosines.iter().map(|&(slot, c)| (0.0 + semantic(c), slot)).collect();
    let entry = |&(score, slot): &(f64, u32)| {
        let (rank, doc) = space.first_of(slot);
        Next { score, rank, doc, slot }
    };
    let better = |a: &(f64, u32), b: &(f64, u32)| {
        b.0.total_cmp(&a.0)
            .then_with(|| space.first_of(a.1).cmp(&space.first_of(b.1)))
    };
    // vectors[..taken] are in the heap; the rest are no better than `threshold` (the best of
    // them), so the heap's top is the next document while it is better than that.
    let (mut taken, mut threshold, mut head) = (0, None, limit.saturating_mul(2).max(HEAD_MIN));
    let mut best = Vec::with_capacity(limit.min(heap.len() + vectors.len()));
    loop {
        let more =
            taken < vectors.len() && (taken == 0 || heap.peek().is_none_or(|top| threshold.is_some_and(|t| *top < t)));
        if more {
            let rest = &mut vectors[taken..];
            let end = if rest.len() > head {
                rest.select_nth_unstable_by(head, better);
                threshold = Some(entry(&rest[head]));
                taken + head
            } else {
                threshold = None;
                vectors.len()
            };
            heap.extend(vectors[taken..end].iter().map(entry));
            taken = end;
            head = head.saturating_mul(4);
            continue;
        }
        let Some(next) = heap.pop() else { break };
        if next.slot != LEXICAL {
            if let Some((rank, doc)) = space.next_of(next.slot, next.rank, next.doc) {
                heap.push(Next { rank, doc, ..next });
            }
            // A lexical candidate comes up once, with its words' score too.
            if words.contains(&next.doc) || !accept(next.doc) {
                continue;
            }
        }
        best.push((next.doc, next.score));
        if best.len() == limit {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::vectors::{ModelVector, unit};
    use super::super::{LEXICAL_WEIGHT, SearchIndex, fuse};
    use super::*;
    use crate::core::types::AgentCard;

    /// The ranking as it was before vectors were shared: every document's cosine (its vector's),
    /// fused, sorted whole (score descending, rank ascending), the first `limit` accepted.
    fn every_document(
        index: &SearchIndex,
        text: &str,
        vector: &ModelVector,
        limit: usize,
        accept: impl Fn(DocKey) -> bool,
    ) -> Vec<(DocKey, f64)> {
        let query = index.prepare_with(text, false);
        let lexical: Vec<(DocKey, f64)> = (0..index.docs.len())
            .filter(|&doc| index.contains(doc) && accept(doc))
            .map(|doc| (doc, index.score_doc(&query, doc)))
            .filter(|d| d.1 > 0.0)
            .collect();
        let space = index
            .vectors
            .space(&vector.model, vector.values.len())
            .expect("vectors");
        let by_slot = space.scan(&unit(&vector.values).expect("a vector"));
        let cosines: Vec<(DocKey, f32)> = (0..index.docs.len())
            .filter_map(|doc| {
                let slot = space.slot_of(doc)?;
                by_slot.iter().find(|s| s.0 == slot).map(|s| (doc, s.1))
            })
            .collect();
        let mut fused = fuse(lexical, &cosines, LEXICAL_WEIGHT, 1);
        fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(index.rank_of(a.0).cmp(&index.rank_of(b.0))));
        fused.into_iter().filter(|d| accept(d.0)).take(limit).collect()
    }

    #[test]
    fn sharing_vectors_ranks_exactly_as_scoring_every_document_did() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let words = ["review", "deploy", "query", "parse", "translate", "summarise"];
        let mut index = SearchIndex::new(1);
        let model: Arc<str> = Arc::from("m");
        let shared: Vec<Vec<f32>> = (0..4)
            .map(|_| (0..8).map(|_| (random() % 1000) as f32 / 500.0 - 1.0).collect())
            .collect();
        for doc in 0..400usize {
            // A third of the cards are replicas of four cards; the rest distinct.
            let replica = doc % 3 == 0;
            let name = if replica {
                format!("replica-{}", doc % 4)
            } else {
                format!("agent-{doc}")
            };
            let card = AgentCard {
                name,
                description: format!("{} and {}", words[doc % 6], words[(doc / 6) % 6]),
                ..AgentCard::default()
            };
            // Ranks out of key order, as re-registrations give.
            let rank = (doc as u64 * 7919) % 401;
            index.insert(doc, rank, &card);
            let values: Vec<f32> = if replica {
                shared[doc % 4].clone()
            } else {
                (0..8).map(|_| (random() % 1000) as f32 / 500.0 - 1.0).collect()
            };
            if doc % 17 != 5 {
                index
                    .set_vector(doc, &model, &unit(&values).expect("a vector"))
                    .expect("stored");
            }
        }
        for doc in (0..400).step_by(11) {
            index.remove(doc);
        }
        index.check_invariants();
        let space = index.vectors.space("m", 8).expect("vectors");
        assert!(space.distinct() < space.len(), "replicas share their vectors");
        for (n, text) in ["review", "deploy the parser", "zzz", "summarise and translate"]
            .iter()
            .enumerate()
        {
            let vector = ModelVector::new("m", shared[n % 4].clone());
            for limit in [0, 1, 5, 10, 40, 1000] {
                // No filter, two that refuse a third or half, one that lets a seventh through
                // (the selection of vectors then has to grow past its first 32).
                for filter in 0..4usize {
                    let accept = |doc: DocKey| match filter {
                        0 => true,
                        3 => doc.is_multiple_of(7),
                        _ => !doc.is_multiple_of(filter + 1),
                    };
                    let query = index.prepare_with(text, false);
                    let ranked = index.top_hybrid(&query, Some(&vector), LEXICAL_WEIGHT, limit, accept);
                    let expected = every_document(&index, text, &vector, limit, accept);
                    assert_eq!(ranked.docs, expected, "{text:?}, limit {limit}, filter {filter}");
                }
            }
        }
    }
}
