//! Typo tolerance: a trigram index over the index's vocabulary (the terms that have postings) that
//! finds the terms within edit distance 1 (2 for long terms) of a query term the vocabulary lacks.
//! It never holds a term without postings, and never lets hash order reach its answer.

use super::super::types::{Map, Set, new_map, new_set};

/// Terms shorter than this are neither corrected nor offered as corrections: at two letters
/// every edit is a different word.
const TERM_CHARS_MIN: usize = 3;
/// From this length on a term may be two edits away.
const TWO_EDITS_CHARS_MIN: usize = 8;
/// Corrections offered for one query term at most (the nearest, then alphabetical).
const CORRECTIONS_MAX: usize = 4;

type Trigram = [char; 3];

pub struct TypoIndex {
    /// trigram of "^term$" -> the terms containing it
    grams: Map<Trigram, Set<Box<str>>>,
    hash_seed: u64,
}

/// Only words of letters take part: an identifier with digits ("team43") one edit from another
/// ("team44") is a different thing, not a typo.
fn eligible(term: &str) -> bool {
    term.chars().count() >= TERM_CHARS_MIN && term.chars().all(char::is_alphabetic)
}

fn max_edits(chars: usize) -> usize {
    if chars >= TWO_EDITS_CHARS_MIN { 2 } else { 1 }
}

/// The distinct trigrams of the term padded with `^` and `$`, in order of first appearance.
fn trigrams(term: &str) -> Vec<Trigram> {
    let padded: Vec<char> = std::iter::once('^')
        .chain(term.chars())
        .chain(std::iter::once('$'))
        .collect();
    let mut grams: Vec<Trigram> = Vec::with_capacity(padded.len());
    for window in padded.windows(3) {
        let gram = [window[0], window[1], window[2]];
        if !grams.contains(&gram) {
            grams.push(gram);
        }
    }
    grams
}

/// Optimal string alignment distance (insertions, deletions, substitutions and transpositions of
/// neighbours), or `None` when it exceeds `limit`.
pub fn edit_distance(a: &[char], b: &[char], limit: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    let width = b.len() + 1;
    let mut before: Vec<usize> = vec![0; width];
    let mut previous: Vec<usize> = (0..width).collect();
    let mut current: Vec<usize> = vec![0; width];
    for i in 1..=a.len() {
        current[0] = i;
        let mut row_min = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            current[j] = d;
            row_min = row_min.min(d);
        }
        if row_min > limit {
            return None;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    Some(previous[b.len()]).filter(|&d| d <= limit)
}

impl TypoIndex {
    pub fn new(hash_seed: u64) -> Self {
        TypoIndex {
            grams: new_map(hash_seed),
            hash_seed,
        }
    }

    /// A term got its first posting.
    pub fn insert(&mut self, term: &str) {
        if !eligible(term) {
            return;
        }
        for gram in trigrams(term) {
            let hash_seed = self.hash_seed;
            self.grams
                .entry(gram)
                .or_insert_with(|| new_set(hash_seed))
                .insert(term.into());
        }
    }

    /// A term lost its last posting.
    pub fn remove(&mut self, term: &str) {
        if !eligible(term) {
            return;
        }
        for gram in trigrams(term) {
            let terms = self
                .grams
                .get_mut(&gram)
                .expect("an indexed term's trigrams are indexed");
            terms.remove(term);
            if terms.is_empty() {
                self.grams.remove(&gram);
            }
        }
    }

    /// Indexed terms near `term`, with their edit distance: nearest first, then alphabetical, at
    /// most `CORRECTIONS_MAX`. A candidate must share enough trigrams to be within reach (an
    /// edit breaks at most three, a transposition four), so few are compared letter by letter.
    /// Each trigram entry read is taken from `budget`; a look-up that would overdraw it stops
    /// counting there.
    pub fn corrections(&self, term: &str, budget: &mut usize) -> Vec<(Box<str>, usize)> {
        if !eligible(term) {
            return Vec::new();
        }
        let chars: Vec<char> = term.chars().collect();
        let limit = max_edits(chars.len());
        let grams = trigrams(term);
        let needed = grams.len().saturating_sub(4 * limit).max(1);
        let mut shared: Map<&str, usize> = new_map(self.hash_seed);
        for gram in &grams {
            if let Some(terms) = self.grams.get(gram) {
                if *budget < terms.len() {
                    break;
                }
                *budget -= terms.len();
                for candidate in terms {
                    *shared.entry(candidate).or_insert(0) += 1;
                }
            }
        }
        let mut found: Vec<(Box<str>, usize)> = shared
            .into_iter()
            .filter(|&(_, count)| count >= needed)
            .filter_map(|(candidate, _)| {
                let other: Vec<char> = candidate.chars().collect();
                let distance = edit_distance(&chars, &other, limit.min(max_edits(other.len())))?;
                (distance > 0).then(|| (candidate.into(), distance))
            })
            .collect();
        found.sort_unstable_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        found.truncate(CORRECTIONS_MAX);
        found
    }

    pub fn check_invariants<'a>(&self, vocabulary: impl Iterator<Item = &'a str>) {
        let mut expected = 0;
        for term in vocabulary.filter(|t| eligible(t)) {
            for gram in trigrams(term) {
                let present = self.grams.get(&gram).is_some_and(|terms| terms.contains(term));
                assert!(present, "term {term:?} missing from trigram {gram:?}");
                expected += 1;
            }
        }
        let held: usize = self.grams.values().map(|terms| terms.len()).sum();
        assert_eq!(held, expected, "the trigram index holds terms that are gone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(a: &str, b: &str, limit: usize) -> Option<usize> {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        edit_distance(&a, &b, limit)
    }

    #[test]
    fn edit_distance_counts_neighbour_transpositions_as_one_edit() {
        assert_eq!(distance("review", "reveiw", 2), Some(1));
        assert_eq!(distance("pull", "pul", 2), Some(1));
        assert_eq!(distance("kitten", "sitting", 3), Some(3));
        assert_eq!(distance("kitten", "sitting", 2), None);
        assert_eq!(distance("same", "same", 0), Some(0));
    }

    #[test]
    fn corrections_find_near_terms_nearest_first_and_skip_short_or_numeric_ones() {
        let mut index = TypoIndex::new(3);
        for term in ["review", "reviewer", "preview", "deploy", "team44", "go"] {
            index.insert(term);
        }
        let names = |term: &str| -> Vec<(String, usize)> {
            let mut budget = usize::MAX;
            index
                .corrections(term, &mut budget)
                .into_iter()
                .map(|(t, d)| (t.into(), d))
                .collect()
        };
        assert_eq!(names("reveiw"), [("review".to_string(), 1)]);
        assert_eq!(names("deploi"), [("deploy".to_string(), 1)]);
        assert_eq!(names("reviewwer"), [("reviewer".to_string(), 1)]);
        assert_eq!(names("previwe"), [("preview".to_string(), 1)]);
        assert!(names("team43").is_empty(), "identifiers with digits are not corrected");
        assert!(names("ga").is_empty(), "two letters are too short to correct");
        assert!(names("kubernetes").is_empty());
    }

    #[test]
    fn a_look_up_takes_its_trigram_reads_from_the_budget_and_stops_when_it_runs_out() {
        let mut index = TypoIndex::new(3);
        index.insert("review");
        let mut budget = 100;
        assert_eq!(index.corrections("reveiw", &mut budget).len(), 1);
        assert_eq!(budget, 98, "two trigrams of \"reveiw\" are indexed, one term each");
        let mut budget = 0;
        assert!(index.corrections("reveiw", &mut budget).is_empty());
    }

    #[test]
    fn removed_terms_are_no_longer_offered() {
        let mut index = TypoIndex::new(3);
        index.insert("review");
        index.insert("deploy");
        index.remove("review");
        index.check_invariants(["deploy"].into_iter());
        assert!(index.corrections("reveiw", &mut 1000).is_empty());
    }
}
