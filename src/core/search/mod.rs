//! The relevance index behind Find's natural-language query: BM25F over an agent card's fields
//! (name, tools, capability names, description, capability descriptions, metadata values),
//! updated incrementally as agents come and go, with each query term widened to typo corrections
//! (`typo`) and related terms (`related`) at a discount, so an exact match still wins.
//!
//! A query's work is bounded whatever the fleet's size: it reads at most `QUERY_POSTINGS_MAX`
//! posting entries, shared among its terms rarest first (a rare term's documents are all read; a
//! common term's best ones, in posting order: best field first, then oldest), and scores each
//! document it meets once, from that document's own term list, against every query term. Where
//! every posting fits the budget (any fleet of a few thousand cards) that is exact BM25F.
//!
//! With card vectors (`vectors`, set by `SetCardVector`) and a query vector (computed before Find
//! entered the core), the ranking is hybrid: the BM25F score, divided by the best among the
//! candidates, and the cosine, min-max scaled over the vectors scanned, are mixed linearly
//! (`LEXICAL_WEIGHT` for BM25F), over the lexical candidates and at most `VECTORS_SCANNED_MAX`
//! vectors. Without either, the ranking is BM25F alone.
//!
//! Architecture invariant: the index keeps only integer statistics (term frequencies, field
//! lengths, document frequencies), so scores are a pure function of the indexed cards, whatever
//! the order they arrived and left in; a document's score sums in query-term order; hash-map
//! order never reaches an output.

pub mod card_text;
mod hybrid;
mod posting;
mod related;
mod tokenize;
mod typo;
pub mod vectors;

use slab::Slab;
use tokenize::{tokenize, tokenize_tool};

use super::types::{AgentCard, Map, Set, new_map, new_set};
use posting::{Entry, Posting};
use std::sync::Arc;
use typo::TypoIndex;

use vectors::{ModelVector, VectorSpaces};

pub type DocKey = usize;

/// Field weights: where a word appears says how much it tells about the agent. Highest first, so
/// a field's index is also its tier in a posting's reading order.
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
/// Posting entries one query reads at most (each document met is then scored once): with a
/// million cards a query for common words stays within about a millisecond of the core's time.
pub const QUERY_POSTINGS_MAX: usize = 8192;
/// The share of the BM25F score in a hybrid ranking (the cosine's is the rest): chosen by
/// cross-validation on the tuning split of `tests/search` (see README.md, "How Find ranks").
pub const LEXICAL_WEIGHT: f64 = 0.2;

type FieldCounts = [u32; FIELDS];
type TermId = u32;

struct Doc {
    /// Where the document ranks among equals (its agent's registration): posting order and ties.
    rank: u64,
    lengths: FieldCounts,
    /// The document's distinct terms with their occurrences per field, by term id: scoring a
    /// document reads this, never another posting.
    terms: Box<[(TermId, FieldCounts)]>,
}

impl Doc {
    fn counts(&self, term: TermId) -> Option<&FieldCounts> {
        let at = self.terms.binary_search_by_key(&term, |&(t, _)| t).ok()?;
        Some(&self.terms[at].1)
    }
}

struct Term {
    text: Box<str>,
    docs: Posting,
}

pub struct SearchIndex {
    /// By document key (dense: the registry's slab keys).
    docs: Vec<Option<Doc>>,
    doc_count: usize,
    /// The vocabulary: every term with at least one document, interned.
    terms: Slab<Term>,
    by_text: Map<Box<str>, TermId>,
    /// The terms of `postings`, by trigram, for typo corrections.
    typos: TypoIndex,
    total_lengths: [u64; FIELDS],
    hash_seed: u64,
    /// Card vectors, for the indexed documents that have one, each model's apart.
    vectors: VectorSpaces,
}

/// One index term a query term stands for, with the weight a match through it gets.
struct Expansion {
    term: TermId,
    weight: f64,
    idf: f64,
}

/// A query made ready against the index: per query term (deduplicated, in order) the index
/// terms it stands for, and the statistics its scores use.
pub struct Query {
    terms: Vec<Vec<Expansion>>,
    average: [f64; FIELDS],
}

impl Query {
    /// True when no query term stands for any indexed term: nothing can match.
    pub fn matches_nothing(&self) -> bool {
        self.terms.iter().all(Vec::is_empty)
    }
}

/// Documents a query ranked, best first, and the posting entries it read to find them.
pub struct Ranked {
    pub docs: Vec<(DocKey, f64)>,
    pub postings_read: usize,
}

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

/// The best field a term occurs in: its tier in the term's posting.
fn tier(counts: &FieldCounts) -> usize {
    counts
        .iter()
        .position(|&n| n > 0)
        .expect("a document's term occurs in some field")
}

impl SearchIndex {
    pub fn new(hash_seed: u64) -> Self {
        SearchIndex {
            docs: Vec::new(),
            doc_count: 0,
            terms: Slab::new(),
            by_text: new_map(hash_seed),
            typos: TypoIndex::new(hash_seed),
            total_lengths: [0; FIELDS],
            hash_seed,
            vectors: VectorSpaces::new(hash_seed),
        }
    }

    /// Sets `doc`'s card vector, stored as given (bit for bit, so a restored snapshot scores as
    /// the original did): it must be unit length (`vectors::unit` makes it so). Refused for a
    /// document not indexed, a vector that is not unit length, or a model beyond
    /// `VECTOR_MODELS_MAX`. It replaces the document's vector, whichever model made that.
    pub fn set_vector(&mut self, doc: DocKey, model: &Arc<str>, vector: &[f32]) -> Result<(), String> {
        if !self.contains(doc) {
            return Err("the card is not searchable".into());
        }
        if !vectors::is_unit(vector) {
            return Err("a card vector must be finite and of unit length".into());
        }
        vectors::check_model_name(model)?;
        let rank = self.rank_of(doc);
        self.vectors.set(doc, rank, model, vector)
    }

    /// `doc`'s card vector (unit length) and its model, if it has one.
    pub fn vector(&self, doc: DocKey) -> Option<(&Arc<str>, &[f32])> {
        self.vectors.get(doc)
    }

    /// True when card vectors of `vector`'s model and dimension are held: a query vector is
    /// scored against those alone.
    pub fn has_vectors_of(&self, vector: &ModelVector) -> bool {
        self.vectors.space(&vector.model, vector.values.len()).is_some()
    }

    /// The card vectors of `model` in `dims` dimensions, if any are held.
    pub fn vector_space(&self, model: &str, dims: usize) -> Option<&vectors::VectorIndex> {
        self.vectors.space(model, dims)
    }

    /// How many distinct card vectors of `vector`'s model and dimension are held (replicas of
    /// one card share theirs): what a hybrid ranking scores.
    pub fn distinct_vectors_of(&self, vector: &ModelVector) -> usize {
        self.vectors
            .space(&vector.model, vector.values.len())
            .map_or(0, vectors::VectorIndex::distinct)
    }

    /// The models whose card vectors are held: name, dimension, vectors.
    pub fn vector_models(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.vectors.models()
    }

    /// How many indexed documents have a vector.
    pub fn vectors_len(&self) -> usize {
        self.vectors.len()
    }

    pub fn len(&self) -> usize {
        self.doc_count
    }

    pub fn is_empty(&self) -> bool {
        self.doc_count == 0
    }

    pub fn contains(&self, doc: DocKey) -> bool {
        self.doc(doc).is_some()
    }

    fn doc(&self, doc: DocKey) -> Option<&Doc> {
        self.docs.get(doc).and_then(Option::as_ref)
    }

    /// The rank `doc` was indexed with.
    pub fn rank_of(&self, doc: DocKey) -> u64 {
        self.doc(doc).expect("an indexed document").rank
    }

    /// Indexes `card` as `doc`; `rank` orders it among equals (the agent's registration).
    pub fn insert(&mut self, doc: DocKey, rank: u64, card: &AgentCard) {
        assert!(!self.contains(doc), "document {doc} indexed twice");
        let mut counts: Vec<(String, FieldCounts)> = Vec::new();
        let mut seen: Map<String, usize> = new_map(self.hash_seed);
        let mut lengths = [0u32; FIELDS];
        for (field, tokens) in card_fields(card).into_iter().enumerate() {
            lengths[field] = tokens.len() as u32;
            for token in tokens {
                let at = *seen.entry(token.clone()).or_insert_with(|| {
                    counts.push((token, [0; FIELDS]));
                    counts.len() - 1
                });
                counts[at].1[field] += 1;
            }
        }
        let mut terms: Vec<(TermId, FieldCounts)> = Vec::with_capacity(counts.len());
        for (text, tf) in counts {
            let id = self.intern(text);
            self.terms[id as usize].docs.insert(Entry::new(tier(&tf), rank, doc));
            terms.push((id, tf));
        }
        terms.sort_unstable_by_key(|&(id, _)| id);
        for (total, len) in self.total_lengths.iter_mut().zip(lengths) {
            *total += u64::from(len);
        }
        if self.docs.len() <= doc {
            self.docs.resize_with(doc + 1, || None);
        }
        self.docs[doc] = Some(Doc {
            rank,
            lengths,
            terms: terms.into_boxed_slice(),
        });
        self.doc_count += 1;
    }

    /// The id of `text`, entering it into the vocabulary (and the typo index) if new.
    fn intern(&mut self, text: String) -> TermId {
        if let Some(&id) = self.by_text.get(text.as_str()) {
            return id;
        }
        self.typos.insert(&text);
        let text: Box<str> = text.into();
        let id = self.terms.insert(Term {
            text: text.clone(),
            docs: Posting::new(),
        });
        let id = TermId::try_from(id).expect("the vocabulary fits 32-bit term ids");
        self.by_text.insert(text, id);
        id
    }

    pub fn remove(&mut self, doc: DocKey) {
        let entry = self
            .docs
            .get_mut(doc)
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("document {doc} is not indexed"));
        self.doc_count -= 1;
        self.vectors.remove(doc);
        for &(id, ref tf) in entry.terms.iter() {
            let term = &mut self.terms[id as usize];
            let removed = term.docs.remove(Entry::new(tier(tf), entry.rank, doc));
            assert!(removed, "an indexed document is in its terms' postings");
            if term.docs.is_empty() {
                let term = self.terms.remove(id as usize);
                self.by_text.remove(&term.text);
                self.typos.remove(&term.text);
            }
        }
        for (total, len) in self.total_lengths.iter_mut().zip(entry.lengths) {
            *total -= u64::from(len);
        }
    }

    /// Makes `text` ready to score: its terms (at most 64, each once), each with the index terms
    /// it stands for and their idf, and the average field lengths.
    pub fn prepare(&self, text: &str) -> Query {
        self.prepare_with(text, true)
    }

    /// `prepare`, with the hand-written related terms or without them (`related_terms`): a
    /// hybrid ranking goes without, as the sentence encoder knows the language better (on the
    /// tuning split, MRR@10 0.855 without against 0.845 with).
    pub fn prepare_with(&self, text: &str, related_terms: bool) -> Query {
        let mut words: Vec<String> = Vec::new();
        for token in tokenize(text) {
            if !words.contains(&token) && words.len() < QUERY_TERMS_MAX {
                words.push(token);
            }
        }
        let n = self.doc_count as f64;
        let mut average = [0.0; FIELDS];
        for (average, &total) in average.iter_mut().zip(&self.total_lengths) {
            *average = (total as f64 / n.max(1.0)).max(1.0);
        }
        let mut budget = EXPANSION_WORK_MAX;
        let terms = words
            .iter()
            .map(|word| {
                self.expand(word, related_terms, &mut budget)
                    .into_iter()
                    .map(|(term, weight)| {
                        let df = self.terms[term as usize].docs.len() as f64;
                        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                        Expansion { term, weight, idf }
                    })
                    .collect()
            })
            .collect();
        Query { terms, average }
    }

    /// `doc`'s BM25F score for `query` (0 when it shares no term): each query term counts once,
    /// through the best of its expansions there, summed in query-term order.
    pub fn score_doc(&self, query: &Query, doc: DocKey) -> f64 {
        let Some(entry) = self.doc(doc) else {
            return 0.0;
        };
        let mut total = 0.0;
        for expansions in &query.terms {
            let mut best: Option<f64> = None;
            for expansion in expansions {
                if let Some(tf) = entry.counts(expansion.term) {
                    let score = term_score(expansion, tf, &entry.lengths, &query.average);
                    best = Some(best.map_or(score, |b: f64| b.max(score)));
                }
            }
            if let Some(best) = best {
                total += best;
            }
        }
        total
    }

    /// The documents `query` ranks, best first (ties by rank), at most `limit`, among those
    /// `accept` lets through: found by reading at most `QUERY_POSTINGS_MAX` posting entries.
    pub fn top(&self, query: &Query, limit: usize, accept: impl Fn(DocKey) -> bool) -> Ranked {
        self.top_hybrid(query, None, LEXICAL_WEIGHT, limit, accept)
    }

    /// `top`, fused with the cosine of `vector` (a query vector) with the card vectors of its
    /// model and dimension when both exist (never another model's): `lexical_weight` x BM25F /
    /// best BM25F + (1 - `lexical_weight`) x the cosine min-max scaled over the vectors scanned.
    /// A document with neither a term nor a vector scanned is not ranked.
    pub fn top_hybrid(
        &self,
        query: &Query,
        vector: Option<&ModelVector>,
        lexical_weight: f64,
        limit: usize,
        accept: impl Fn(DocKey) -> bool,
    ) -> Ranked {
        let mut met: Set<DocKey> = new_set(self.hash_seed);
        let mut docs: Vec<(DocKey, f64)> = Vec::new();
        let postings_read = self.candidates(query, QUERY_POSTINGS_MAX, |doc| {
            if met.insert(doc) && accept(doc) {
                let score = self.score_doc(query, doc);
                if score > 0.0 {
                    docs.push((doc, score));
                }
            }
        });
        debug_assert!(postings_read <= QUERY_POSTINGS_MAX);
        let order = |a: &(DocKey, f64), b: &(DocKey, f64)| {
            b.1.total_cmp(&a.1)
                .then_with(|| self.rank_of(a.0).cmp(&self.rank_of(b.0)))
        };
        let semantic = vector.and_then(|v| {
            let space = self.vectors.space(&v.model, v.values.len())?;
            Some((space, vectors::unit(&v.values).ok()?))
        });
        if let Some((space, vector)) = semantic {
            // Every distinct vector of the query's model is scored once; whether an agent may
            // be answered (status, tools) is asked only of the best ones, so the scan touches
            // no agent, and a vector's replicas are read only as far as the answer goes.
            let cosines = space.scan(&vector);
            if !cosines.is_empty() {
                let rank_of = |doc| self.rank_of(doc);
                let docs = hybrid::best(
                    docs,
                    space,
                    &cosines,
                    lexical_weight,
                    limit,
                    rank_of,
                    &accept,
                    self.hash_seed,
                );
                return Ranked { docs, postings_read };
            }
        }
        if docs.len() > limit {
            if limit == 0 {
                docs.clear();
            } else {
                docs.select_nth_unstable_by(limit - 1, order);
                docs.truncate(limit);
            }
        }
        docs.sort_unstable_by(order);
        Ranked { docs, postings_read }
    }

    /// The cosine of `vector` (unit length, made by `model`) with `doc`'s card vector, if it has
    /// one of that model and dimension.
    pub fn cosine(&self, doc: DocKey, model: &str, vector: &[f32]) -> Option<f32> {
        let (card_model, card) = self.vectors.get(doc)?;
        (**card_model == *model && card.len() == vector.len()).then(|| vectors::dot(card, vector))
    }

    /// Every document `text` (and `vector`, if given) ranks, best first, fused with
    /// `lexical_weight`, its terms widened with related terms or not: the search evaluation's
    /// entry point (Find's choices are `LEXICAL_WEIGHT`, and related terms only without a vector).
    pub fn score_hybrid(
        &self,
        text: &str,
        vector: Option<&ModelVector>,
        lexical_weight: f64,
        related_terms: bool,
    ) -> Vec<(DocKey, f64)> {
        let query = self.prepare_with(text, related_terms);
        self.top_hybrid(&query, vector, lexical_weight, usize::MAX, |_| true)
            .docs
    }

    /// Every document `text` ranks, best first: `top` with no limit but its reading budget.
    pub fn score(&self, text: &str) -> Vec<(DocKey, f64)> {
        self.top(&self.prepare(text), usize::MAX, |_| true).docs
    }

    /// Calls `visit` with the documents of the query's index terms, rarest term first, reading at
    /// most `budget` entries: each term gets an equal share of what the rarer ones left, so a
    /// rare term is read whole and every common one contributes its best documents. Returns the
    /// entries read.
    fn candidates(&self, query: &Query, budget: usize, mut visit: impl FnMut(DocKey)) -> usize {
        let mut terms: Vec<TermId> = query.terms.iter().flatten().map(|e| e.term).collect();
        terms.sort_unstable();
        terms.dedup();
        let mut terms: Vec<(usize, &str, &Posting)> = terms
            .into_iter()
            .map(|id| {
                let term = &self.terms[id as usize];
                (term.docs.len(), &*term.text, &term.docs)
            })
            .collect();
        terms.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut read = 0;
        let count = terms.len();
        for (done, (_, _, posting)) in terms.into_iter().enumerate() {
            let share = (budget - read) / (count - done);
            for entry in posting.iter().take(share) {
                visit(entry.doc);
                read += 1;
            }
        }
        debug_assert!(read <= budget);
        read
    }

    /// The index terms a query term stands for: itself when indexed, else its typo corrections
    /// (unless the related-terms table knows it as a word of its own); then the relatives of
    /// those, discounted again. Only terms with postings, each once, at its best weight.
    fn expand(&self, word: &str, related_terms: bool, budget: &mut usize) -> Vec<(TermId, f64)> {
        let mut expansion: Vec<(TermId, f64)> = Vec::new();
        if let Some(&id) = self.by_text.get(word) {
            expansion.push((id, 1.0));
        } else if !(related_terms && related::is_known(word)) {
            for (correction, edits) in self.typos.corrections(word, budget) {
                let id = *self
                    .by_text
                    .get(&*correction)
                    .expect("the typo index holds only indexed terms");
                let df = self.terms[id as usize].docs.len();
                if *budget < df {
                    break;
                }
                *budget -= df;
                expansion.push((id, TYPO_WEIGHTS[edits - 1]));
            }
        }
        let mut sources: Vec<(&str, f64)> = expansion
            .iter()
            .map(|&(id, weight)| (&*self.terms[id as usize].text, weight))
            .collect();
        if sources.is_empty() {
            sources.push((word, 1.0));
        }
        if !related_terms {
            return expansion;
        }
        for (source, weight) in sources {
            for relative in related::related(source).iter().take(RELATED_PER_TERM_MAX) {
                let Some(&id) = self.by_text.get(relative.as_str()) else {
                    continue;
                };
                if expansion.iter().any(|&(t, _)| t == id) {
                    continue;
                }
                let df = self.terms[id as usize].docs.len();
                if *budget < df {
                    return expansion;
                }
                *budget -= df;
                expansion.push((id, weight * RELATED_WEIGHT));
            }
        }
        expansion
    }

    pub fn check_invariants(&self) {
        let mut totals = [0u64; FIELDS];
        let mut postings = 0;
        let mut docs = 0;
        for (doc, entry) in self.docs.iter().enumerate() {
            let Some(entry) = entry else { continue };
            docs += 1;
            for (total, len) in totals.iter_mut().zip(entry.lengths) {
                *total += u64::from(len);
            }
            assert!(
                entry.terms.windows(2).all(|w| w[0].0 < w[1].0),
                "document {doc}'s terms out of order"
            );
            for (id, tf) in entry.terms.iter() {
                let term = self.terms.get(*id as usize);
                let posted = term.is_some_and(|t| t.docs.contains(Entry::new(tier(tf), entry.rank, doc)));
                assert!(posted, "document {doc} missing from the posting of term {id}");
            }
            postings += entry.terms.len();
        }
        assert_eq!(docs, self.doc_count, "document count drifted");
        assert_eq!(totals, self.total_lengths, "field length totals drifted");
        let posted: usize = self.terms.iter().map(|(_, t)| t.docs.len()).sum();
        assert_eq!(posted, postings, "postings hold documents that are gone");
        assert_eq!(self.by_text.len(), self.terms.len(), "vocabulary index size");
        for (id, term) in &self.terms {
            assert!(!term.docs.is_empty(), "a term without documents kept");
            assert_eq!(
                self.by_text.get(&term.text).map(|&t| t as usize),
                Some(id),
                "term {:?} not interned",
                term.text
            );
            term.docs.check_invariants();
        }
        self.typos.check_invariants(self.terms.iter().map(|(_, t)| &*t.text));
        self.vectors.check_invariants(|doc| self.contains(doc));
    }
}

/// Lexical scores (each > 0) and cosines mixed: `lexical_weight` x score / best score +
/// (1 - `lexical_weight`) x the cosine min-max scaled over `cosines`. In no set order: callers
/// sort.
pub fn fuse(
    lexical: Vec<(DocKey, f64)>,
    cosines: &[(DocKey, f32)],
    lexical_weight: f64,
    hash_seed: u64,
) -> Vec<(DocKey, f64)> {
    if cosines.is_empty() {
        return lexical;
    }
    let best_lexical = lexical.iter().map(|d| d.1).fold(0.0, f64::max);
    let (low, high) = cosines
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &(_, c)| (lo.min(c), hi.max(c)));
    let (low, spread) = (f64::from(low), f64::from(high - low).max(1e-9));
    let mut words: Map<DocKey, f64> = new_map(hash_seed);
    words.extend(
        lexical
            .into_iter()
            .map(|(doc, score)| (doc, lexical_weight * score / best_lexical)),
    );
    let mut fused: Vec<(DocKey, f64)> = Vec::with_capacity(cosines.len() + words.len());
    for &(doc, cosine) in cosines {
        let word_score = if words.is_empty() {
            0.0
        } else {
            words.remove(&doc).unwrap_or(0.0)
        };
        fused.push((
            doc,
            word_score + (1.0 - lexical_weight) * (f64::from(cosine) - low) / spread,
        ));
    }
    fused.extend(words);
    fused
}

/// One index term's BM25F contribution to one document.
fn term_score(expansion: &Expansion, tf: &FieldCounts, lengths: &FieldCounts, average: &[f64; FIELDS]) -> f64 {
    let weighted: f64 = (0..FIELDS)
        .filter(|&f| tf[f] > 0)
        .map(|f| {
            let norm = 1.0 - B + B * f64::from(lengths[f]) / average[f];
            FIELD_WEIGHTS[f] * f64::from(tf[f]) / norm
        })
        .sum();
    expansion.weight * expansion.idf * weighted * (K1 + 1.0) / (weighted + K1)
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
            index.insert(key, key as u64, card);
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
        index.insert(deployer, deployer as u64, &cards[deployer]);
        index.check_invariants();
        assert_eq!(index.score("kuberntes")[0].0, deployer);
    }

    #[test]
    fn the_budgeted_ranking_equals_scoring_every_document_when_the_postings_fit() {
        let cards = fleet();
        let index = index(&cards);
        for query in [
            "fetch and parse web pages",
            "translte docments into frnech",
            "check the code changes and ship the release",
            "meeting",
            "nothing-matches-this",
        ] {
            let prepared = index.prepare(query);
            let mut every: Vec<(DocKey, f64)> = (0..cards.len())
                .map(|doc| (doc, index.score_doc(&prepared, doc)))
                .filter(|&(_, score)| score > 0.0)
                .collect();
            every.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let ranked = index.top(&prepared, usize::MAX, |_| true);
            assert_eq!(ranked.docs, every, "{query:?}");
            assert!(ranked.postings_read <= QUERY_POSTINGS_MAX);
            let three = index.top(&prepared, 3, |_| true).docs;
            assert_eq!(
                three[..],
                every[..every.len().min(3)],
                "{query:?}: the top 3 of the same ranking"
            );
        }
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
        with.insert(100, 100, &extra);
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
            backward.insert(key, key as u64, card);
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
            index.insert(i, i as u64, &card(&format!("agent-{i}"), &description, &[]));
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
