//! Search quality: the cards of `cards.txt` go into the search index behind Find and every query
//! of `queries-tuning.txt`, `queries-heldout.txt` and `queries-legacy.txt` is ranked; MRR@10,
//! recall@1 and recall@5 are printed per split and query kind and checked against floors.
//! `cargo test --test search -- --nocapture` shows the figures and every tuning or legacy query
//! that misses (never a held-out one). A new ranker plugs in as an `eval::Ranker`.

mod eval;

use std::collections::HashSet;

use agentkeeper::core::search::SearchIndex;
use agentkeeper::core::types::AgentCard;
use eval::{Ranker, Split};

/// What a ranker must keep on a split (a little under what it reaches, so a regression fails):
/// MRR@10, recall@1, recall@5.
struct Floors {
    split: Split,
    mrr_at_10: f64,
    recall_at_1: f64,
    recall_at_5: f64,
}

/// The lexical ranking's floors, about 0.03 under what it reaches before issue 20's encoder
/// (212 cards): tuning MRR@10 0.661, recall@1 0.600, recall@5 0.739; held-out 0.667, 0.584,
/// 0.768; legacy 0.851, 0.767, 0.958 (0.939 with the 72 cards it was written against). The
/// figures per kind are in BENCHMARKS.md.
const LEXICAL_FLOORS: [Floors; 3] = [
    Floors {
        split: Split::Tuning,
        mrr_at_10: 0.63,
        recall_at_1: 0.57,
        recall_at_5: 0.71,
    },
    Floors {
        split: Split::HeldOut,
        mrr_at_10: 0.64,
        recall_at_1: 0.55,
        recall_at_5: 0.74,
    },
    Floors {
        split: Split::Legacy,
        mrr_at_10: 0.82,
        recall_at_1: 0.73,
        recall_at_5: 0.93,
    },
];

/// Find's lexical ranking (BM25F with stemming, typo corrections and related terms).
struct Lexical {
    index: SearchIndex,
}

impl Lexical {
    fn new(cards: &[AgentCard]) -> Lexical {
        let mut index = SearchIndex::new(7);
        for (key, card) in cards.iter().enumerate() {
            index.insert(key, key as u64, card);
        }
        index.check_invariants();
        Lexical { index }
    }
}

impl Ranker for Lexical {
    fn rank(&self, query: &str) -> Vec<usize> {
        self.index.score(query).into_iter().map(|(key, _)| key).collect()
    }
}

/// Every floor the report falls below, as "<ranker>: <split> <measure> <value> below <floor>".
fn below_floors(report: &eval::Report, floors: &[Floors]) -> Vec<String> {
    let mut failures = Vec::new();
    for floor in floors {
        let totals = report.split(floor.split);
        let label = floor.split.label();
        assert!(totals.queries > 0, "{label}: no queries");
        for (measure, value, min) in [
            ("MRR@10", totals.mrr(), floor.mrr_at_10),
            ("recall@1", totals.recall_at_1(), floor.recall_at_1),
            ("recall@5", totals.recall_at_5(), floor.recall_at_5),
        ] {
            if value < min {
                failures.push(format!("{}: {label} {measure} {value:.3} below {min}", report.ranker));
            }
        }
    }
    failures
}

#[test]
fn evaluation_set_has_200_cards_and_queries_split_evenly_per_kind() {
    let cards = eval::cards();
    let queries = eval::queries(&cards);
    assert!(cards.len() >= 200, "at least 200 cards, got {}", cards.len());
    let names: HashSet<&str> = cards.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cards.len(), "card names are unique");

    let count = |split: Split, kind: Option<&str>| {
        queries
            .iter()
            .filter(|q| q.split == split && kind.is_none_or(|k| q.kind == k))
            .count()
    };
    let new = count(Split::Tuning, None) + count(Split::HeldOut, None);
    assert!(new >= 200, "at least 200 queries beyond the legacy ones, got {new}");
    assert!(count(Split::Legacy, None) >= 60, "the legacy queries are kept");
    let kinds: HashSet<&str> = queries.iter().map(|q| q.kind.as_str()).collect();
    for kind in kinds {
        let (tuning, held_out) = (count(Split::Tuning, Some(kind)), count(Split::HeldOut, Some(kind)));
        assert!(
            tuning.abs_diff(held_out) <= 2,
            "{kind}: {tuning} tuning against {held_out} held out"
        );
    }
    let paraphrases = count(Split::Tuning, Some("paraphrase")) + count(Split::HeldOut, Some("paraphrase"));
    assert!(
        2 * paraphrases > new,
        "paraphrases are the majority: {paraphrases} of {new}"
    );

    let mut texts = HashSet::new();
    for query in &queries {
        assert!(
            texts.insert(query.text.to_lowercase()),
            "a query appears twice: {:?}",
            query.text
        );
    }
}

#[test]
fn lexical_ranking_meets_its_floors_on_tuning_held_out_and_legacy_queries() {
    let cards = eval::cards();
    let queries = eval::queries(&cards);
    let lexical = Lexical::new(&cards);
    let report = eval::evaluate("lexical", &lexical, &cards, &queries, true);
    report.print();
    let failures = below_floors(&report, &LEXICAL_FLOORS);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_ranking_that_ignores_the_query_falls_below_every_floor() {
    let cards = eval::cards();
    let queries = eval::queries(&cards);
    let in_card_order = |_: &str| (0..cards.len()).collect::<Vec<usize>>();
    let report = eval::evaluate("card order", &in_card_order, &cards, &queries, false);
    let failures = below_floors(&report, &LEXICAL_FLOORS);
    assert_eq!(failures.len(), 9, "{failures:?}");
}
