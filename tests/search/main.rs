//! Search quality: the cards in `cards.txt` go into the search index behind Find, every query in
//! `queries.txt` is scored, and MRR@10, recall@1 and recall@5 are printed overall, per query kind
//! and for the held-out queries, then checked against floors set from what the ranking reaches.
//! `cargo test --test search -- --nocapture` shows the figures and every tuned-on query that misses.

use agentkeeper::core::search::SearchIndex;
use agentkeeper::core::types::{AgentCard, Capability};

const CARDS: &str = include_str!("cards.txt");
const QUERIES: &str = include_str!("queries.txt");

/// The figures the ranking must keep (a little under what it reaches, so a regression fails).
const FLOOR_MRR_AT_10: f64 = 0.90;
const FLOOR_RECALL_AT_1: f64 = 0.85;
const FLOOR_RECALL_AT_5: f64 = 0.95;
const FLOOR_HELD_OUT_MRR_AT_10: f64 = 0.85;

struct Query {
    kind: String,
    relevant: Vec<String>,
    text: String,
    held_out: bool,
}

fn parse_cards() -> Vec<AgentCard> {
    let mut cards: Vec<AgentCard> = Vec::new();
    for line in CARDS.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("# ") {
            continue;
        }
        if let Some(name) = line.strip_prefix("## ") {
            cards.push(AgentCard {
                name: name.trim().to_string(),
                version: "1.0.0".into(),
                ..AgentCard::default()
            });
            continue;
        }
        let card = cards.last_mut().expect("a card line before the first card");
        let (key, value) = line.split_once(':').unwrap_or_else(|| panic!("bad card line {line:?}"));
        let value = value.trim();
        match key {
            "description" => card.description = value.to_string(),
            "tools" => card.tools = value.split(',').map(|t| t.trim().to_string()).collect(),
            "capability" => {
                let (name, description) = value.split_once('|').expect("capability: name | description");
                card.capabilities.push(Capability {
                    name: name.trim().into(),
                    description: description.trim().into(),
                });
            }
            "meta" => {
                let (k, v) = value.split_once('=').expect("meta: key=value");
                card.metadata.push((k.trim().into(), v.trim().into()));
                card.metadata.sort();
            }
            other => panic!("unknown card field {other:?}"),
        }
    }
    cards
}

fn parse_queries(cards: &[AgentCard]) -> Vec<Query> {
    let mut queries = Vec::new();
    for line in QUERIES.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.splitn(3, '|').map(str::trim).collect();
        assert_eq!(parts.len(), 3, "bad query line {line:?}");
        let relevant: Vec<String> = parts[1].split(',').map(|r| r.trim().to_string()).collect();
        for name in &relevant {
            assert!(cards.iter().any(|c| &c.name == name), "unknown relevant agent {name:?}");
        }
        let held_out = queries.len() % 4 == 3;
        queries.push(Query {
            kind: parts[0].to_string(),
            relevant,
            text: parts[2].to_string(),
            held_out,
        });
    }
    queries
}

#[derive(Default, Clone, Copy)]
struct Totals {
    queries: usize,
    reciprocal_rank: f64,
    recall_1: f64,
    recall_5: f64,
}

impl Totals {
    fn add(&mut self, ranked: &[String], relevant: &[String]) {
        self.queries += 1;
        if let Some(rank) = ranked.iter().take(10).position(|n| relevant.contains(n)) {
            self.reciprocal_rank += 1.0 / (rank + 1) as f64;
        }
        self.recall_1 += recall_at(ranked, relevant, 1);
        self.recall_5 += recall_at(ranked, relevant, 5);
    }

    fn mrr(&self) -> f64 {
        self.reciprocal_rank / self.queries as f64
    }

    fn line(&self, label: &str) -> String {
        let n = self.queries as f64;
        format!(
            "{label:<12} n={:<3} MRR@10 {:.3}  recall@1 {:.3}  recall@5 {:.3}",
            self.queries,
            self.mrr(),
            self.recall_1 / n,
            self.recall_5 / n
        )
    }
}

/// Recall at k, capped: the share of the query's relevant agents in the top k, out of as many as
/// could fit there (so a query with two relevant agents scores 1 at k=1 when either comes first).
fn recall_at(ranked: &[String], relevant: &[String], k: usize) -> f64 {
    let found = ranked.iter().take(k).filter(|n| relevant.contains(n)).count();
    found as f64 / relevant.len().min(k) as f64
}

#[test]
fn search_quality_meets_its_floors_on_the_evaluation_set() {
    let cards = parse_cards();
    let queries = parse_queries(&cards);
    assert!(cards.len() >= 60, "at least 60 cards, got {}", cards.len());
    assert!(queries.len() >= 50, "at least 50 queries, got {}", queries.len());
    let mut index = SearchIndex::new(7);
    for (key, card) in cards.iter().enumerate() {
        index.insert(key, key as u64, card);
    }
    index.check_invariants();

    let mut overall = Totals::default();
    let mut held_out = Totals::default();
    let mut tuned = Totals::default();
    let mut kinds: Vec<(String, Totals)> = Vec::new();
    for query in &queries {
        let ranked: Vec<String> = index
            .score(&query.text)
            .into_iter()
            .take(10)
            .map(|(key, _)| cards[key].name.clone())
            .collect();
        overall.add(&ranked, &query.relevant);
        if query.held_out {
            held_out.add(&ranked, &query.relevant);
        } else {
            tuned.add(&ranked, &query.relevant);
        }
        match kinds.iter_mut().find(|(k, _)| *k == query.kind) {
            Some((_, totals)) => totals.add(&ranked, &query.relevant),
            None => {
                let mut totals = Totals::default();
                totals.add(&ranked, &query.relevant);
                kinds.push((query.kind.clone(), totals));
            }
        }
        // Held-out misses are not shown: tuning must not see them.
        if !query.held_out && ranked.first().is_none_or(|top| !query.relevant.contains(top)) {
            println!(
                "miss [{}] {:?}: want {:?}, got {:?}",
                query.kind,
                query.text,
                query.relevant,
                &ranked[..ranked.len().min(3)]
            );
        }
    }
    println!("{}", overall.line("overall"));
    for (kind, totals) in &kinds {
        println!("{}", totals.line(kind));
    }
    println!("{}", tuned.line("tuned-on"));
    println!("{}", held_out.line("held-out"));

    let n = overall.queries as f64;
    assert!(
        overall.mrr() >= FLOOR_MRR_AT_10,
        "MRR@10 {:.3} below {FLOOR_MRR_AT_10}",
        overall.mrr()
    );
    assert!(
        overall.recall_1 / n >= FLOOR_RECALL_AT_1,
        "recall@1 {:.3} below {FLOOR_RECALL_AT_1}",
        overall.recall_1 / n
    );
    assert!(
        overall.recall_5 / n >= FLOOR_RECALL_AT_5,
        "recall@5 {:.3} below {FLOOR_RECALL_AT_5}",
        overall.recall_5 / n
    );
    assert!(
        held_out.mrr() >= FLOOR_HELD_OUT_MRR_AT_10,
        "held-out MRR@10 {:.3} below {FLOOR_HELD_OUT_MRR_AT_10}",
        held_out.mrr()
    );
}
