//! PLACEHOLDER (replaced by the real index).
use super::types::AgentCard;
use std::collections::BTreeMap;
pub type DocKey = usize;
pub struct SearchIndex {
    docs: BTreeMap<DocKey, String>,
}
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| t.len() > 1)
        .map(String::from)
        .collect()
}
impl SearchIndex {
    pub fn new(_hash_seed: u64) -> Self {
        SearchIndex { docs: BTreeMap::new() }
    }
    pub fn insert(&mut self, doc: DocKey, card: &AgentCard) {
        self.docs.insert(
            doc,
            format!("{} {} {}", card.name, card.description, card.tools.join(" ")).to_lowercase(),
        );
    }
    pub fn remove(&mut self, doc: DocKey) {
        self.docs.remove(&doc);
    }
    pub fn contains(&self, doc: DocKey) -> bool {
        self.docs.contains_key(&doc)
    }
    pub fn score(&self, query: &str) -> Vec<(DocKey, f64)> {
        let q = tokenize(query);
        self.docs
            .iter()
            .map(|(k, t)| (*k, q.iter().filter(|w| t.contains(w.as_str())).count() as f64))
            .filter(|x| x.1 > 0.0)
            .collect()
    }
    pub fn len(&self) -> usize {
        self.docs.len()
    }
    pub fn check_invariants(&self) {}
}
