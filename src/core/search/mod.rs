//! The relevance index behind Find's natural-language query: BM25F over an agent card's fields
//! (name, tools, capability names, description, capability descriptions, metadata values),
//! updated incrementally as agents come and go, with each query term widened to typo corrections
//! (`typo`) and related terms (`related`) at a discount, so an exact match still wins.
//!
//! Architecture invariant: the index keeps only integer statistics (term frequencies, field
//! lengths, document frequencies), so scores are a pure function of the indexed cards, whatever
//! the order they arrived and left in; a query scores only the documents that share a term (or a
//! correction or relative of one) with it, summing in query-term order, and never lets hash-map
//! order reach its output.

mod related;
mod tokenize;
mod typo;

use tokenize::{tokenize, tokenize_tool};

use super::types::{AgentCard, Map, new_map};
use typo::TypoIndex;

pub type DocKey = usize;

/// Field weights: where a word appears says how much it tells about the agent.
const FIELD_WEIGHTS: [f64; FIELDS] = [3.0, 2.0, 2.0, 1.0, 1.0, 0.5];
const FIELDS: usize = 6;
const FIELD_NAME: usize = 0;
const FIELD_TOOLS: usize = 1;
const FIELD_CAPABILITY_NAMES: usize = 2;
const FIELD_DESCRIPTION: usize = 3;
const FIELD_CAPABILITY_DESCRIPTIONS: usize = 4;
const FIELD_METADATA: usize = 5;
/// BM25's term-frequency saturation and length normalisation.
const K1: f64 = 1.2;
const B: f64 = 0.75;
/// Query terms considered at most: bounds a query's work whatever its length.
const QUERY_TERMS_MAX: usize = 64;
/// What a match through a typo correction (one edit, two edits) or a related term is worth
/// against an exact match of the same term.
const TYPO_WEIGHTS: [f64; 2] = [0.7, 0.5];
const RELATED_WEIGHT: f64 = 0.7;
/// Relatives of one query term looked up at most.
const RELATED_PER_TERM_MAX: usize = 16;
/// Trigram entries and postings visited for corrections and relatives, per query, at most: the
/// expansions of a long query stop here (in query-term order, so the cut is the same for the same
/// state), which bounds a find whatever the vocabulary.
const EXPANSION_WORK_MAX: usize = 60_000;

type FieldCounts = [u32; FIELDS];

struct Doc {
    lengths: FieldCounts,
    /// The document's distinct terms (to remove its postings without a scan).
    terms: Vec<Box<str>>,
}

pub struct SearchIndex {
    docs: Map<DocKey, Doc>,
    /// term -> document -> occurrences per field
    postings: Map<Box<str>, Map<DocKey, FieldCounts>>,
    /// The terms of `postings`, by trigram, for typo corrections.
    typos: TypoIndex,
    total_lengths: [u64; FIELDS],
    hash_seed: u64,
}

/// What one query term stands for: index terms, each with the weight a match through it gets.
type Expansion<'a> = Vec<(&'a str, f64)>;

/// Every field's tokens for one card.
fn card_fields(card: &AgentCard) -> [Vec<String>; FIELDS] {
    let mut fields: [Vec<String>; FIELDS] = Default::default();
    fields[FIELD_NAME] = tokenize(&card.name);
    fields[FIELD_TOOLS] = card.tools.iter().flat_map(|t| tokenize_tool(t)).collect();
    fields[FIELD_CAPABILITY_NAMES] = card.capabilities.iter().flat_map(|c| tokenize_tool(&c.name)).collect();
    fields[FIELD_DESCRIPTION] = tokenize(&card.description);
    fields[FIELD_CAPABILITY_DESCRIPTIONS] = card
        .capabilities
        .iter()
        .flat_map(|c| tokenize(&c.description))
        .collect();
    fields[FIELD_METADATA] = card.metadata.iter().flat_map(|(_, v)| tokenize(v)).collect();
    fields
}

impl SearchIndex {
    pub fn new(hash_seed: u64) -> Self {
        SearchIndex {
            docs: new_map(hash_seed),
            postings: new_map(hash_seed),
            typos: TypoIndex::new(hash_seed),
            total_lengths: [0; FIELDS],
            hash_seed,
        }
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn contains(&self, doc: DocKey) -> bool {
        self.docs.contains_key(&doc)
    }

    pub fn insert(&mut self, doc: DocKey, card: &AgentCard) {
        assert!(!self.docs.contains_key(&doc), "document {doc} indexed twice");
        let mut counts: Map<Box<str>, FieldCounts> = new_map(self.hash_seed);
        let mut terms: Vec<Box<str>> = Vec::new();
        let mut lengths = [0u32; FIELDS];
        for (field, tokens) in card_fields(card).into_iter().enumerate() {
            lengths[field] = tokens.len() as u32;
            for token in tokens {
                let entry = counts.entry(token.as_str().into()).or_insert_with(|| {
                    terms.push(token.as_str().into());
                    [0; FIELDS]
                });
                entry[field] += 1;
            }
        }
        for term in &terms {
            let tf = counts[term];
            let hash_seed = self.hash_seed;
            let posting = self.postings.entry(term.clone()).or_insert_with(|| new_map(hash_seed));
            if posting.is_empty() {
                self.typos.insert(term);
            }
            posting.insert(doc, tf);
        }
        for (total, len) in self.total_lengths.iter_mut().zip(lengths) {
            *total += u64::from(len);
        }
        self.docs.insert(doc, Doc { lengths, terms });
    }

    pub fn remove(&mut self, doc: DocKey) {
        let entry = self
            .docs
            .remove(&doc)
            .unwrap_or_else(|| panic!("document {doc} is not indexed"));
        for term in &entry.terms {
            let posting = self.postings.get_mut(term).expect("an indexed term has postings");
            posting
                .remove(&doc)
                .expect("an indexed document is in its terms' postings");
            if posting.is_empty() {
                self.postings.remove(term);
                self.typos.remove(term);
            }
        }
        for (total, len) in self.total_lengths.iter_mut().zip(entry.lengths) {
            *total -= u64::from(len);
        }
    }

    /// Documents sharing a term (or a correction or relative of one) with the query, by BM25F
    /// score, highest first, ties by key. Each query term counts once per document: through the
    /// best of its expansions there.
    pub fn score(&self, query: &str) -> Vec<(DocKey, f64)> {
        let mut terms: Vec<String> = Vec::new();
        for token in tokenize(query) {
            if !terms.contains(&token) && terms.len() < QUERY_TERMS_MAX {
                terms.push(token);
            }
        }
        let n = self.docs.len() as f64;
        let average: Vec<f64> = self
            .total_lengths
            .iter()
            .map(|&total| (total as f64 / n.max(1.0)).max(1.0))
            .collect();
        let mut scores: Map<DocKey, f64> = new_map(self.hash_seed);
        let mut best: Map<DocKey, f64> = new_map(self.hash_seed);
        let mut expansion_budget = EXPANSION_WORK_MAX;
        for term in &terms {
            let expansion = self.expand(term, &mut expansion_budget);
            let single = expansion.len() == 1;
            for (index_term, weight) in expansion {
                let posting = &self.postings[index_term];
                let df = posting.len() as f64;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                for (&doc, tf) in posting {
                    let lengths = &self.docs[&doc].lengths;
                    let weighted: f64 = (0..FIELDS)
                        .filter(|&f| tf[f] > 0)
                        .map(|f| {
                            let norm = 1.0 - B + B * f64::from(lengths[f]) / average[f];
                            FIELD_WEIGHTS[f] * f64::from(tf[f]) / norm
                        })
                        .sum();
                    let score = weight * idf * weighted * (K1 + 1.0) / (weighted + K1);
                    if single {
                        *scores.entry(doc).or_insert(0.0) += score;
                    } else {
                        let kept = best.entry(doc).or_insert(0.0);
                        *kept = kept.max(score);
                    }
                }
            }
            // Each document's sum runs in query-term order: the same for every map layout.
            for (doc, score) in best.drain() {
                *scores.entry(doc).or_insert(0.0) += score;
            }
        }
        let mut ranked: Vec<(DocKey, f64)> = scores.into_iter().filter(|&(_, s)| s > 0.0).collect();
        ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked
    }

    /// The index terms a query term stands for: itself when indexed, else its typo corrections
    /// (unless the related-terms table knows it as a word of its own); then the relatives of
    /// those, discounted again. Only terms with postings, each once, at its best weight.
    fn expand<'a>(&'a self, term: &str, budget: &mut usize) -> Expansion<'a> {
        let mut expansion: Expansion<'a> = Vec::new();
        if let Some((indexed, _)) = self.postings.get_key_value(term) {
            expansion.push((indexed, 1.0));
        } else if !related::is_known(term) {
            for (correction, edits) in self.typos.corrections(term, budget) {
                let (indexed, posting) = self
                    .postings
                    .get_key_value(&*correction)
                    .expect("the typo index holds only indexed terms");
                if *budget < posting.len() {
                    break;
                }
                *budget -= posting.len();
                expansion.push((indexed, TYPO_WEIGHTS[edits - 1]));
            }
        }
        let mut sources: Vec<(&str, f64)> = expansion.clone();
        if sources.is_empty() {
            sources.push((term, 1.0));
        }
        for (source, weight) in sources {
            for relative in related::related(source).iter().take(RELATED_PER_TERM_MAX) {
                let Some((indexed, posting)) = self.postings.get_key_value(relative.as_str()) else {
                    continue;
                };
                if expansion.iter().any(|(t, _)| *t == &**indexed) {
                    continue;
                }
                if *budget < posting.len() {
                    return expansion;
                }
                *budget -= posting.len();
                expansion.push((indexed, weight * RELATED_WEIGHT));
            }
        }
        expansion
    }

    pub fn check_invariants(&self) {
        let mut totals = [0u64; FIELDS];
        let mut postings = 0;
        for (doc, entry) in &self.docs {
            for (total, len) in totals.iter_mut().zip(entry.lengths) {
                *total += u64::from(len);
            }
            for term in &entry.terms {
                let present = self.postings.get(term).is_some_and(|p| p.contains_key(doc));
                assert!(present, "document {doc} missing from the postings of {term:?}");
            }
            postings += entry.terms.len();
        }
        assert_eq!(totals, self.total_lengths, "field length totals drifted");
        let posted: usize = self.postings.values().map(|p| p.len()).sum();
        assert_eq!(posted, postings, "postings hold documents that are gone");
        assert!(
            self.postings.values().all(|p| !p.is_empty()),
            "a term without documents kept"
        );
        self.typos.check_invariants(self.postings.keys().map(|t| &**t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Capability;

    fn card(name: &str, description: &str, tools: &[&str]) -> AgentCard {
        AgentCard {
            name: name.into(),
            description: description.into(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            ..AgentCard::default()
        }
    }

    fn fleet() -> Vec<AgentCard> {
        vec![
            card(
                "web-scraper",
                "Fetches and parses web pages into structured data",
                &["browser", "http_client"],
            ),
            card(
                "sql-analyst",
                "Runs SQL queries against the warehouse and summarises tables",
                &["sql_runner"],
            ),
            card(
                "code-reviewer",
                "Reviews pull requests for bugs and style problems",
                &["git", "github_api"],
            ),
            card(
                "translator",
                "Translates documents between English, German and French",
                &["deepl"],
            ),
            card(
                "pdf-reader",
                "Extracts text and tables from PDF files",
                &["pdf_reader", "ocr"],
            ),
            card(
                "scheduler",
                "Books meetings and manages calendars",
                &["google_calendar"],
            ),
            card(
                "support-bot",
                "Answers customer support tickets by email",
                &["zendesk", "email"],
            ),
            card(
                "image-captioner",
                "Describes images and generates alt text",
                &["vision_model"],
            ),
            card(
                "deployer",
                "Deploys services to Kubernetes and rolls back failed releases",
                &["kubectl", "helm"],
            ),
            card(
                "summariser",
                "Summarises long documents and meeting transcripts",
                &["llm"],
            ),
        ]
    }

    fn index(cards: &[AgentCard]) -> SearchIndex {
        let mut index = SearchIndex::new(5);
        for (key, card) in cards.iter().enumerate() {
            index.insert(key, card);
        }
        index.check_invariants();
        index
    }

    fn top(index: &SearchIndex, cards: &[AgentCard], query: &str) -> String {
        let ranked = index.score(query);
        assert!(!ranked.is_empty(), "nothing matched {query:?}");
        cards[ranked[0].0].name.clone()
    }

    #[test]
    fn realistic_queries_rank_the_right_agent_first() {
        let cards = fleet();
        let index = index(&cards);
        for (query, expected) in [
            ("fetch and parse web pages", "web-scraper"),
            ("run a SQL query on the warehouse", "sql-analyst"),
            ("review my pull request", "code-reviewer"),
            ("translate this document to German", "translator"),
            ("extract tables from a PDF", "pdf-reader"),
            ("book a meeting", "scheduler"),
            ("deploy to kubernetes", "deployer"),
            ("http_client", "web-scraper"),
        ] {
            assert_eq!(top(&index, &cards, query), expected, "query {query:?}");
        }
    }

    #[test]
    fn a_misspelt_query_finds_the_agent_through_a_typo_correction() {
        let cards = fleet();
        let index = index(&cards);
        assert_eq!(top(&index, &cards, "translte docments into frnech"), "translator");
        assert_eq!(top(&index, &cards, "deploi to kubernets"), "deployer");
    }

    #[test]
    fn a_related_term_finds_an_agent_and_an_exact_match_still_outranks_it() {
        let cards = vec![
            card("builder-a", "ships builds to production", &[]),
            card("builder-b", "deploys builds to production", &[]),
            card("cook", "bakes bread", &[]),
        ];
        let index = index(&cards);
        let ranked: Vec<&str> = index
            .score("deploy")
            .iter()
            .map(|&(k, _)| cards[k].name.as_str())
            .collect();
        assert_eq!(ranked, ["builder-b", "builder-a"]);
    }

    #[test]
    fn an_exact_match_outranks_a_typo_correction_of_another_term() {
        let cards = vec![card("a", "reviews code", &[]), card("b", "previews code", &[])];
        let index = index(&cards);
        // "preview" is indexed, so it is taken as written, and "review" is not offered for it.
        let ranked: Vec<&str> = index
            .score("preview")
            .iter()
            .map(|&(k, _)| cards[k].name.as_str())
            .collect();
        assert_eq!(ranked, ["b"]);
    }

    #[test]
    fn corrections_come_and_go_with_the_documents_that_hold_the_term() {
        let cards = fleet();
        let mut index = index(&cards);
        let deployer = cards.iter().position(|c| c.name == "deployer").expect("in the fleet");
        assert!(index.score("kuberntes").iter().any(|&(k, _)| k == deployer));
        index.remove(deployer);
        index.check_invariants();
        assert!(
            index.score("kuberntes").is_empty(),
            "no document holds the corrected term any more"
        );
        index.insert(deployer, &cards[deployer]);
        index.check_invariants();
        assert_eq!(index.score("kuberntes")[0].0, deployer);
    }

    #[test]
    fn a_name_match_outranks_a_description_only_match() {
        let cards = vec![
            card("helper", "a translator of sorts", &[]),
            card("translator", "helps with words", &[]),
        ];
        assert_eq!(top(&index(&cards), &cards, "translator"), "translator");
    }

    #[test]
    fn a_rare_term_outranks_a_common_one() {
        let mut cards: Vec<AgentCard> = (0..20).map(|i| card(&format!("a{i}"), "data pipeline", &[])).collect();
        cards.push(card("z", "kafka data", &[]));
        cards.push(card("y", "data data", &[]));
        let index = index(&cards);
        assert_eq!(top(&index, &cards, "kafka data"), "z");
    }

    #[test]
    fn remove_restores_the_index_as_if_the_document_never_came() {
        let cards = fleet();
        let mut with = index(&cards);
        let without = index(&cards[..9]);
        let extra = card("intruder", "fetches web pages badly", &["browser"]);
        with.insert(100, &extra);
        assert!(with.score("web pages").iter().any(|&(k, _)| k == 100));
        with.remove(100);
        with.remove(9);
        with.check_invariants();
        assert!(!with.contains(100));
        assert_eq!(
            with.score("fetch web pages summarise documents"),
            without.score("fetch web pages summarise documents")
        );
    }

    #[test]
    fn scores_do_not_depend_on_insertion_order_or_hash_seed() {
        let cards = fleet();
        let forward = index(&cards);
        let mut backward = SearchIndex::new(99);
        for (key, card) in cards.iter().enumerate().rev() {
            backward.insert(key, card);
        }
        for query in [
            "web pages",
            "documents meeting",
            "sql tables pdf",
            "nothing-matches-this",
            "reveiw the pul request",
            "ship the release and check the bills",
        ] {
            assert_eq!(forward.score(query), backward.score(query), "{query:?}");
            assert_eq!(forward.score(query), forward.score(query));
        }
    }

    #[test]
    fn capability_and_metadata_fields_are_searchable() {
        let mut special = card("agent-x", "general purpose", &[]);
        special.capabilities = vec![Capability {
            name: "invoiceMatching".into(),
            description: "reconciles ledgers".into(),
        }];
        special.metadata = vec![("team".into(), "accounting".into())];
        let cards = vec![card("agent-y", "general purpose", &[]), special];
        let index = index(&cards);
        assert_eq!(top(&index, &cards, "invoice matching"), "agent-x");
        assert_eq!(top(&index, &cards, "reconcile the ledgers"), "agent-x");
        assert_eq!(top(&index, &cards, "accounting"), "agent-x");
    }

    #[test]
    fn ten_thousand_cards_score_only_documents_that_share_a_term() {
        let vocabulary = [
            "scrape",
            "translate",
            "review",
            "deploy",
            "summarise",
            "book",
            "extract",
            "answer",
        ];
        let mut index = SearchIndex::new(1);
        for i in 0..10_000usize {
            let description = format!("{} things for team{}", vocabulary[i % vocabulary.len()], i % 100);
            index.insert(i, &card(&format!("agent-{i}"), &description, &[]));
        }
        let ranked = index.score("team43 deploy");
        let shares_a_term = |k: usize| k % 100 == 43 || k % vocabulary.len() == 3;
        assert!(
            ranked.iter().all(|&(k, _)| shares_a_term(k)),
            "a document without a query term was scored"
        );
        assert_eq!(ranked.len(), (0..10_000).filter(|&k| shares_a_term(k)).count());
        let best = ranked[0].0;
        assert!(best % 100 == 43 && best % vocabulary.len() == 3, "both terms beat one");
    }
}
