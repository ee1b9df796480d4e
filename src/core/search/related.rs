//! The word lists, written by hand from general knowledge and tokenized like any text once, on
//! first use: `related_terms.txt` (groups of words people use for the same need in the domains
//! agents serve) and `common_words.txt` (words never taken for typos). Never learnt from queries or cards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use super::tokenize::tokenize;

const TABLE: &str = include_str!("related_terms.txt");
const COMMON_WORDS: &str = include_str!("common_words.txt");

/// term -> its relatives (sorted, itself excluded), in a map whose order is its keys'.
static RELATED: LazyLock<BTreeMap<String, Vec<String>>> = LazyLock::new(|| parse(TABLE));
static COMMON: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    COMMON_WORDS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(tokenize)
        .collect()
});

fn parse(table: &str) -> BTreeMap<String, Vec<String>> {
    let mut related: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in table.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut group: Vec<String> = line.split_whitespace().flat_map(tokenize).collect();
        group.sort();
        group.dedup();
        for term in &group {
            let relatives = related.entry(term.clone()).or_default();
            relatives.extend(group.iter().filter(|t| *t != term).cloned());
        }
    }
    for relatives in related.values_mut() {
        relatives.sort();
        relatives.dedup();
    }
    related
}

/// The relatives of an index term (empty for a term the table does not know).
pub fn related(term: &str) -> &'static [String] {
    RELATED.get(term).map_or(&[], Vec::as_slice)
}

/// Whether a list knows the term as a word: a known word is not taken for a typo of another.
pub fn is_known(term: &str) -> bool {
    RELATED.contains_key(term) || COMMON.contains(term)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_word_is_one_plain_token() {
        for line in TABLE.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(words.len() >= 2, "a group of one word relates nothing: {line:?}");
            for word in words {
                assert_eq!(
                    tokenize(word).len(),
                    1,
                    "{word:?} is a stop word or splits into several tokens"
                );
            }
        }
    }

    #[test]
    fn relations_are_symmetric_and_stemmed() {
        assert!(related("deploy").iter().any(|t| t == "ship"));
        assert!(related("ship").iter().any(|t| t == "deploy"));
        // "invoices" and "invoice" are one stem, which lists neither itself nor duplicates.
        let stem = &tokenize("invoices")[0];
        assert_eq!(stem, &tokenize("invoice")[0]);
        let invoice = related(stem);
        assert!(!invoice.is_empty() && !invoice.contains(stem));
        assert!(invoice.windows(2).all(|w| w[0] < w[1]));
        assert!(related("nonexistentword").is_empty());
    }

    #[test]
    fn common_and_related_words_are_known_and_others_are_not() {
        assert!(is_known("new") && is_known(&tokenize("making")[0]) && is_known("deploy"));
        assert!(!is_known("reveiw") && !is_known("dashbord"));
    }
}
