//! Find: ALIVE agents that list every asked-for tool, ranked by a query's relevance (the query
//! ranks, it does not filter: agents matching no term follow in registration order) or, with no
//! query, in registration order. A query vector, when Find brings one, makes the ranking hybrid
//! (BM25F fused with the cosine to the card vectors: `search`).
//!
//! Architecture invariant: a find never walks all agents. The tool filter is a leapfrog
//! intersection of the tools' postings (ALIVE agents by tool, in registration order), rarest
//! first, at most `TOOL_STEPS_MAX` seeks; a query reads at most the search index's posting budget
//! and scores at most `VECTORS_SCANNED_MAX` card vectors.
//! Its answer never depends on hash-map order.

use super::registry::{ByRegistration, Registry};
use super::search::vectors::{self, ModelVector, VECTORS_SCANNED_MAX};
use super::search::{LEXICAL_WEIGHT, QUERY_POSTINGS_MAX, Query, fuse};
use super::types::AgentStatus;
use super::{Core, Outcome, Reply, validate};

/// Seeks into tool postings one find makes at most. An intersection of common tools that share
/// few agents (the one case where leapfrogging cannot skip ahead) stops here and answers with the
/// agents it found; every agent it answers with has every tool.
pub const TOOL_STEPS_MAX: usize = 8192;
/// A tool filter this selective (its rarest tool's ALIVE agents, at most) is scored whole
/// against a query, so the ranking among the agents it lets through is exact.
const SCORE_WHOLE_FILTER_MAX: usize = QUERY_POSTINGS_MAX;

/// What one find read: the measure of "bounded work" its tests assert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FindWork {
    /// Search-index posting entries read for the query.
    pub postings_read: usize,
    /// Seeks into tool postings (or into the ALIVE agents, with no tool filter).
    pub tool_steps: usize,
    /// Card vectors scored against the query vector (a selective tool filter: one per agent it
    /// lets through; otherwise each distinct vector of the query's model once).
    pub vectors_scanned: usize,
}

/// ALIVE agents that list every tool of a filter, in registration order, lazily: each step seeks
/// one posting to the smallest registration not yet ruled out, rarest posting first, and counts
/// against the budget.
pub struct ToolMatches<'a> {
    postings: Vec<&'a ByRegistration>,
    from: u64,
    steps: usize,
    done: bool,
}

impl<'a> ToolMatches<'a> {
    fn new(mut postings: Vec<&'a ByRegistration>) -> Self {
        postings.sort_by_key(|p| p.len());
        ToolMatches {
            done: postings.first().is_none_or(|p| p.is_empty()),
            postings,
            from: 0,
            steps: 0,
        }
    }

    fn none() -> Self {
        ToolMatches {
            postings: Vec::new(),
            from: 0,
            steps: 0,
            done: true,
        }
    }

    /// Seeks made so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The first entry of posting `i` at or after `from`, one step of the budget.
    fn seek(&mut self, i: usize, from: u64) -> Option<(u64, usize)> {
        if self.steps == TOOL_STEPS_MAX {
            self.done = true;
            return None;
        }
        self.steps += 1;
        let found = self.postings[i].range(from..).next().map(|(&r, &k)| (r, k));
        if found.is_none() {
            self.done = true;
        }
        found
    }

    /// True when every posting holds `registration` (one seek each): the check for an agent met
    /// elsewhere, say through the search index.
    fn all_hold(&self, registration: u64) -> bool {
        self.postings.iter().all(|p| p.contains_key(&registration))
    }
}

impl Iterator for ToolMatches<'_> {
    type Item = (u64, usize);

    fn next(&mut self) -> Option<(u64, usize)> {
        'candidates: while !self.done {
            let (candidate, key) = self.seek(0, self.from)?;
            for i in 1..self.postings.len() {
                let (found, _) = self.seek(i, candidate)?;
                if found != candidate {
                    self.from = found;
                    continue 'candidates;
                }
            }
            self.from = candidate + 1;
            return Some((candidate, key));
        }
        None
    }
}

impl Registry {
    /// The ALIVE agents that list every one of `tools` (all ALIVE agents when it is empty).
    pub fn tool_matches(&self, tools: &[String]) -> ToolMatches<'_> {
        if tools.is_empty() {
            return ToolMatches::new(vec![self.with_status(AgentStatus::Alive)]);
        }
        let mut names: Vec<&str> = tools.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        let postings: Option<Vec<&ByRegistration>> = names.into_iter().map(|t| self.with_tool(t)).collect();
        postings.map_or_else(ToolMatches::none, ToolMatches::new)
    }

    /// Find's agents, best first, and the work it took: ranked by `query` when it has terms the
    /// index knows, or a query vector (`vector`) when cards have vectors of its model and
    /// dimension, then (up to `limit`) the other matches in registration order.
    pub fn find(
        &self,
        query: &str,
        vector: Option<&ModelVector>,
        tools: &[String],
        limit: usize,
    ) -> (Vec<usize>, FindWork) {
        let mut work = FindWork::default();
        let mut keys: Vec<usize> = Vec::new();
        if !query.trim().is_empty() {
            let semantic = vector.is_some_and(|v| self.search.has_vectors_of(v));
            // A hybrid ranking goes without the related-terms table (see `prepare_with`).
            let prepared = self.search.prepare_with(query, !semantic);
            if !prepared.matches_nothing() || semantic {
                keys = self.rank(&prepared, vector.filter(|_| semantic), tools, limit, &mut work);
            }
        }
        if keys.len() < limit {
            let mut ranked = keys.clone();
            ranked.sort_unstable();
            let mut matches = self.tool_matches(tools);
            for (_, key) in matches.by_ref() {
                if ranked.binary_search(&key).is_err() {
                    keys.push(key);
                    if keys.len() == limit {
                        break;
                    }
                }
            }
            work.tool_steps += matches.steps();
        }
        debug_assert!(keys.len() <= limit);
        debug_assert!(work.postings_read <= QUERY_POSTINGS_MAX && work.tool_steps <= 2 * TOOL_STEPS_MAX);
        debug_assert!(work.vectors_scanned <= VECTORS_SCANNED_MAX);
        (keys, work)
    }

    /// The agents `query` ranks among those the tool filter lets through, best first (ties by
    /// registration), at most `limit`. A selective filter is scored whole (exact); otherwise the
    /// search index's bounded reading finds the candidates and the filter checks each.
    fn rank(
        &self,
        query: &Query,
        vector: Option<&ModelVector>,
        tools: &[String],
        limit: usize,
        work: &mut FindWork,
    ) -> Vec<usize> {
        let mut matches = self.tool_matches(tools);
        let selective = !tools.is_empty()
            && matches
                .postings
                .first()
                .is_none_or(|p| p.len() <= SCORE_WHOLE_FILTER_MAX);
        if selective {
            let vector = vector.and_then(|v| Some((&*v.model, vectors::unit(&v.values).ok()?)));
            let mut lexical: Vec<(usize, f64)> = Vec::new();
            let mut cosines: Vec<(usize, f32)> = Vec::new();
            for (_, key) in matches.by_ref() {
                let score = self.search.score_doc(query, key);
                if score > 0.0 {
                    lexical.push((key, score));
                }
                if let Some(cosine) = vector.as_ref().and_then(|(model, v)| self.search.cosine(key, model, v)) {
                    cosines.push((key, cosine));
                }
            }
            work.tool_steps += matches.steps();
            work.vectors_scanned += cosines.len();
            let mut scored = fuse(lexical, &cosines, LEXICAL_WEIGHT, self.hash_seed);
            let registration = |key: usize| self.get(key).registration;
            scored.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(registration(a.0).cmp(&registration(b.0))));
            scored.truncate(limit);
            return scored.into_iter().map(|(key, _)| key).collect();
        }
        let accept = |key: usize| {
            let agent = self.get(key);
            agent.status == AgentStatus::Alive && (tools.is_empty() || matches.all_hold(agent.registration))
        };
        let ranked = self.search.top_hybrid(query, vector, LEXICAL_WEIGHT, limit, accept);
        work.postings_read += ranked.postings_read;
        if let Some(vector) = vector {
            work.vectors_scanned += self.search.distinct_vectors_of(vector).min(VECTORS_SCANNED_MAX);
        }
        ranked.docs.into_iter().map(|(key, _)| key).collect()
    }
}

impl Core {
    pub(super) fn find(&self, query: &str, vector: Option<&ModelVector>, tools: &[String], limit: u32) -> Outcome {
        validate::length("query", query, 0, validate::QUERY_BYTES_MAX)?;
        validate::tools("tools", tools)?;
        let limit = validate::find_limit(limit);
        let (keys, _) = self.registry.find(query, vector, tools, limit);
        Ok(Reply::Agents(
            keys.into_iter().map(|k| self.registry.get(k).view()).collect(),
        ))
    }
}
