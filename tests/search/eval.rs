//! The evaluation set and its measures: parses the cards and the three query files (tuning,
//! held-out, legacy) and scores any ranking of them (MRR@10, recall@1, recall@5 per split and
//! kind). It knows no ranking: a ranker is anything that turns a query into card indices.
//! It must never print a held-out query or its ranks, only held-out aggregates.

use agentkeeper::core::types::{AgentCard, Capability};

const CARDS: &str = include_str!("cards.txt");
const TUNING: &str = include_str!("queries-tuning.txt");
const HELD_OUT: &str = include_str!("queries-heldout.txt");
const LEGACY: &str = include_str!("queries-legacy.txt");

/// A ranking under evaluation: every card it ranks for `query`, best first, as indices into the
/// cards it was built from (only the first 10 count).
pub trait Ranker {
    fn rank(&self, query: &str) -> Vec<usize>;
}

impl<F: Fn(&str) -> Vec<usize>> Ranker for F {
    fn rank(&self, query: &str) -> Vec<usize> {
        self(query)
    }
}

/// Which file a query comes from. Tuning and legacy queries may be read, misses and all, while
/// tuning a ranking; held-out queries may not.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Split {
    Tuning,
    HeldOut,
    Legacy,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Tuning, Split::HeldOut, Split::Legacy];

    pub fn label(self) -> &'static str {
        match self {
            Split::Tuning => "tuning",
            Split::HeldOut => "held-out",
            Split::Legacy => "legacy",
        }
    }
}

pub struct Query {
    pub split: Split,
    pub kind: String,
    pub relevant: Vec<String>,
    pub text: String,
}

pub fn cards() -> Vec<AgentCard> {
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

/// Every query of the three files, each naming only agents that `cards` holds.
pub fn queries(cards: &[AgentCard]) -> Vec<Query> {
    let mut queries = Vec::new();
    for (split, text) in [
        (Split::Tuning, TUNING),
        (Split::HeldOut, HELD_OUT),
        (Split::Legacy, LEGACY),
    ] {
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.splitn(3, '|').map(str::trim).collect();
            assert_eq!(parts.len(), 3, "bad query line {line:?}");
            let relevant: Vec<String> = parts[1].split(',').map(|r| r.trim().to_string()).collect();
            for name in &relevant {
                assert!(cards.iter().any(|c| &c.name == name), "unknown relevant agent {name:?}");
            }
            queries.push(Query {
                split,
                kind: parts[0].to_string(),
                relevant,
                text: parts[2].to_string(),
            });
        }
    }
    queries
}

#[derive(Default, Clone, Copy)]
pub struct Totals {
    pub queries: usize,
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

    pub fn mrr(&self) -> f64 {
        self.reciprocal_rank / self.queries.max(1) as f64
    }

    pub fn recall_at_1(&self) -> f64 {
        self.recall_1 / self.queries.max(1) as f64
    }

    pub fn recall_at_5(&self) -> f64 {
        self.recall_5 / self.queries.max(1) as f64
    }

    fn line(&self, label: &str) -> String {
        format!(
            "{label:<22} n={:<3} MRR@10 {:.3}  recall@1 {:.3}  recall@5 {:.3}",
            self.queries,
            self.mrr(),
            self.recall_at_1(),
            self.recall_at_5()
        )
    }
}

/// Recall at k, capped: the share of the query's relevant agents in the top k, out of as many as
/// could fit there (so a query with two relevant agents scores 1 at k=1 when either comes first).
fn recall_at(ranked: &[String], relevant: &[String], k: usize) -> f64 {
    let found = ranked.iter().take(k).filter(|n| relevant.contains(n)).count();
    found as f64 / relevant.len().min(k) as f64
}

/// A ranker's figures on one split: overall and per query kind.
struct SplitTotals {
    split: Split,
    overall: Totals,
    kinds: Vec<(String, Totals)>,
}

/// A ranker's figures on the set, per split.
pub struct Report {
    pub ranker: String,
    splits: Vec<SplitTotals>,
}

impl Report {
    pub fn split(&self, split: Split) -> Totals {
        self.splits
            .iter()
            .find(|s| s.split == split)
            .map(|s| s.overall)
            .unwrap_or_default()
    }

    pub fn print(&self) {
        println!("{}:", self.ranker);
        for split in &self.splits {
            let label = split.split.label();
            println!("  {}", split.overall.line(label));
            for (kind, totals) in &split.kinds {
                println!("  {}", totals.line(&format!("  {label} {kind}")));
            }
        }
    }
}

/// Scores `ranker` on every query. With `show_misses`, prints the tuning and legacy queries whose
/// first answer is not a relevant agent (labelled with `name`); never a held-out one.
pub fn evaluate(name: &str, ranker: &dyn Ranker, cards: &[AgentCard], queries: &[Query], show_misses: bool) -> Report {
    let mut splits: Vec<SplitTotals> = Split::ALL
        .iter()
        .map(|&split| SplitTotals {
            split,
            overall: Totals::default(),
            kinds: Vec::new(),
        })
        .collect();
    for query in queries {
        let ranked: Vec<String> = ranker
            .rank(&query.text)
            .into_iter()
            .take(10)
            .map(|key| cards[key].name.clone())
            .collect();
        let split = splits.iter_mut().find(|s| s.split == query.split).expect("every split");
        split.overall.add(&ranked, &query.relevant);
        match split.kinds.iter_mut().find(|(k, _)| *k == query.kind) {
            Some((_, totals)) => totals.add(&ranked, &query.relevant),
            None => {
                let mut totals = Totals::default();
                totals.add(&ranked, &query.relevant);
                split.kinds.push((query.kind.clone(), totals));
            }
        }
        // Held-out misses are never shown: whoever tunes a ranking must not see them.
        if show_misses
            && query.split != Split::HeldOut
            && ranked.first().is_none_or(|top| !query.relevant.contains(top))
        {
            println!(
                "{name} miss [{} {}] {:?}: want {:?}, got {:?}",
                query.split.label(),
                query.kind,
                query.text,
                query.relevant,
                &ranked[..ranked.len().min(3)]
            );
        }
    }
    Report {
        ranker: name.to_string(),
        splits,
    }
}
