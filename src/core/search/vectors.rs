//! Card vectors for Find's semantic half: one unit-length f32 vector per indexed document, kept
//! as given (snapshots carry it bit for bit) and, for the scan, as i8 codes with a scale per
//! vector (contiguous, slot-major: a quarter of the bytes to read per query); the bounded scan
//! scores a query vector against them by cosine (a dot product, the vectors being unit length).
//!
//! Every vector comes with the name of the model that made it, and one ranking never mixes two
//! models: `VectorSpaces` keeps each (model, dimension) apart, a card has one vector (a vector
//! from another model replaces it), and a query vector is scored only against its own model's.
//!
//! Architecture invariant: a vector comes from a command (the network side computed it); nothing
//! here computes one from text. Every vector of a `VectorIndex` has its dimension (set by the
//! first, free again once the index is empty); a scan reads at most `VECTORS_SCANNED_MAX`
//! vectors, in slot order, and sums each dot product in dimension order, so equal inputs give
//! equal scores.

use std::sync::Arc;

use super::DocKey;
use super::card_text::CardDigest;

/// Dimensions of a card vector at most (all-MiniLM-L6-v2 has 384; external embedders up to 4096).
pub const VECTOR_DIMS_MAX: usize = 4096;
/// Vectors one query scores at most: 100,000 agents' worth of 384-d i8 codes is 38 MB read and
/// ~38M multiply-adds, about 6 ms of the core's time. Beyond, the slots after the bound are not scored
/// semantically (lexical matches still are).
pub const VECTORS_SCANNED_MAX: usize = 131_072;

/// Models whose vectors the core holds at once at most (the built-in encoder, an external
/// embedder, and what an earlier run used, until its vectors are replaced).
pub const VECTOR_MODELS_MAX: usize = 4;
/// A model's name is 1 to this many bytes.
pub const VECTOR_MODEL_NAME_MAX: usize = 128;
/// The name of the built-in sentence encoder's vectors (all-MiniLM-L6-v2, 384 dimensions); a
/// log or snapshot of format version 5 or older holds only these.
pub const BUILTIN_MODEL: &str = "all-minilm-l6-v2";

const NO_SLOT: u32 = u32::MAX;

/// A vector and the model that made it (its dimension is its length).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelVector {
    pub model: Arc<str>,
    pub values: Arc<[f32]>,
}

impl ModelVector {
    pub fn new(model: &str, values: impl Into<Arc<[f32]>>) -> ModelVector {
        ModelVector {
            model: Arc::from(model),
            values: values.into(),
        }
    }
}

/// A card's vector as the daemon hands it to the core (inside a Register, when the embedding
/// workers had the card text's vector already): the vector, and the digest of the card text it
/// was computed from, so the core applies it only to that card (as `SetCardVector`).
#[derive(Clone, Debug, PartialEq)]
pub struct CardVector {
    pub card_digest: CardDigest,
    pub vector: ModelVector,
}

/// Whether `model` may name a model: 1 to `VECTOR_MODEL_NAME_MAX` bytes, no control characters.
pub fn check_model_name(model: &str) -> Result<(), String> {
    if model.is_empty() || model.len() > VECTOR_MODEL_NAME_MAX {
        return Err(format!(
            "a vector's model name has 1 to {VECTOR_MODEL_NAME_MAX} bytes, not {}",
            model.len()
        ));
    }
    if model.chars().any(char::is_control) {
        return Err("a vector's model name has no control characters".into());
    }
    Ok(())
}

/// The card vectors of every model held, each model's (and dimension's) in its own index; a
/// document has at most one vector, in one of them. An index left empty goes.
#[derive(Default)]
pub struct VectorSpaces {
    spaces: Vec<(Arc<str>, VectorIndex)>,
}

impl VectorSpaces {
    /// Vectors held, of every model.
    pub fn len(&self) -> usize {
        self.spaces.iter().map(|s| s.1.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.spaces.is_empty()
    }

    /// The index of `model`'s vectors of `dims` dimensions, if any are held.
    pub fn space(&self, model: &str, dims: usize) -> Option<&VectorIndex> {
        self.spaces
            .iter()
            .find(|(name, index)| &**name == model && index.dims() == dims)
            .map(|s| &s.1)
    }

    /// The models held, with their dimension and how many vectors each has, in the order they came.
    pub fn models(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.spaces
            .iter()
            .map(|(name, index)| (&**name, index.dims(), index.len()))
    }

    /// `doc`'s vector and the model that made it.
    pub fn get(&self, doc: DocKey) -> Option<(&Arc<str>, &[f32])> {
        self.spaces
            .iter()
            .find_map(|(name, index)| index.get(doc).map(|v| (name, v)))
    }

    /// Stores `vector` (unit length) as `doc`'s, made by `model`, replacing any vector it had (of
    /// any model); refused, changing nothing, when `VECTOR_MODELS_MAX` other models are held.
    pub fn set(&mut self, doc: DocKey, model: &Arc<str>, vector: &[f32]) -> Result<(), String> {
        let position = self
            .spaces
            .iter()
            .position(|(name, index)| name == model && index.dims() == vector.len());
        if position.is_none() && self.spaces.len() >= VECTOR_MODELS_MAX {
            return Err(format!(
                "card vectors of {VECTOR_MODELS_MAX} models are held already; {model}'s ({} dimensions) \
                 wait until one model's vectors are all replaced",
                vector.len()
            ));
        }
        for (name, index) in &mut self.spaces {
            if !(name == model && index.dims() == vector.len()) {
                index.remove(doc);
            }
        }
        let position = position.unwrap_or_else(|| {
            self.spaces.push((Arc::clone(model), VectorIndex::default()));
            self.spaces.len() - 1
        });
        self.spaces[position].1.set(doc, vector)?;
        self.spaces.retain(|s| !s.1.is_empty());
        debug_assert!(self.get(doc).is_some_and(|(name, _)| name == model));
        Ok(())
    }

    /// Forgets `doc`'s vector, if it has one.
    pub fn remove(&mut self, doc: DocKey) {
        for (_, index) in &mut self.spaces {
            index.remove(doc);
        }
        self.spaces.retain(|s| !s.1.is_empty());
    }

    pub fn check_invariants(&self, indexed: impl Fn(DocKey) -> bool) {
        assert!(self.spaces.len() <= VECTOR_MODELS_MAX, "more models than the bound");
        for (i, (name, index)) in self.spaces.iter().enumerate() {
            assert!(!index.is_empty(), "an empty index kept for {name}");
            index.check_invariants(&indexed);
            for (other, other_index) in &self.spaces[i + 1..] {
                assert!(
                    !(name == other && index.dims() == other_index.dims()),
                    "two indexes for {name}"
                );
                assert!(
                    index.docs.iter().all(|&doc| other_index.get(doc).is_none()),
                    "a document with vectors of {name} and {other}"
                );
            }
        }
    }
}

#[derive(Default)]
pub struct VectorIndex {
    /// 0 while empty.
    dims: usize,
    /// `dims` values per slot.
    values: Vec<f32>,
    /// `dims` i8 codes per slot: the values over the slot's scale, rounded.
    codes: Vec<i8>,
    /// Each slot's scale: its largest absolute value / 127.
    scales: Vec<f32>,
    /// The document in each slot.
    docs: Vec<DocKey>,
    /// Each document's slot, by document key (`NO_SLOT`: none).
    slots: Vec<u32>,
}

/// A vector made ready to store: finite values, unit length; or why not.
pub fn unit(vector: &[f32]) -> Result<Vec<f32>, String> {
    if vector.is_empty() || vector.len() > VECTOR_DIMS_MAX {
        return Err(format!(
            "a vector has 1 to {VECTOR_DIMS_MAX} dimensions, not {}",
            vector.len()
        ));
    }
    if !vector.iter().all(|x| x.is_finite()) {
        return Err("a vector's values must be finite".into());
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm < 1e-12 {
        return Err("a zero vector has no direction".into());
    }
    Ok(vector.iter().map(|x| x / norm).collect())
}

/// True when `vector` has 1 to `VECTOR_DIMS_MAX` finite values and unit length (within 1e-3).
pub fn is_unit(vector: &[f32]) -> bool {
    (1..=VECTOR_DIMS_MAX).contains(&vector.len())
        && vector.iter().all(|x| x.is_finite())
        && (vector.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-3
}

impl VectorIndex {
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The dimension every vector here has (0 while empty).
    pub fn dims(&self) -> usize {
        self.dims
    }

    fn slot(&self, doc: DocKey) -> Option<usize> {
        let slot = *self.slots.get(doc)?;
        (slot != NO_SLOT).then_some(slot as usize)
    }

    pub fn get(&self, doc: DocKey) -> Option<&[f32]> {
        let slot = self.slot(doc)?;
        Some(&self.values[slot * self.dims..(slot + 1) * self.dims])
    }

    /// Stores `vector` (unit length, see `unit`) as `doc`'s, replacing one it had; refused when
    /// its dimension is not the index's.
    pub fn set(&mut self, doc: DocKey, vector: &[f32]) -> Result<(), String> {
        debug_assert!((vector.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-3);
        if self.dims != 0 && vector.len() != self.dims {
            return Err(format!(
                "the vector has {} dimensions; the card vectors held have {}",
                vector.len(),
                self.dims
            ));
        }
        self.dims = vector.len();
        let (codes, scale) = quantise(vector);
        if let Some(slot) = self.slot(doc) {
            self.values[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(vector);
            self.codes[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(&codes);
            self.scales[slot] = scale;
            return Ok(());
        }
        if self.slots.len() <= doc {
            self.slots.resize(doc + 1, NO_SLOT);
        }
        self.slots[doc] = u32::try_from(self.docs.len()).expect("fewer than 2^32 vectors");
        self.docs.push(doc);
        self.values.extend_from_slice(vector);
        self.codes.extend_from_slice(&codes);
        self.scales.push(scale);
        Ok(())
    }

    /// Forgets `doc`'s vector, if it has one (the last slot moves into its place).
    pub fn remove(&mut self, doc: DocKey) {
        let Some(slot) = self.slot(doc) else { return };
        let last = self.docs.len() - 1;
        if slot != last {
            let moved = self.docs[last];
            self.values
                .copy_within(last * self.dims..(last + 1) * self.dims, slot * self.dims);
            self.docs[slot] = moved;
            self.slots[moved] = slot as u32;
        }
        self.docs.pop();
        self.values.truncate(last * self.dims);
        self.codes.truncate(last * self.dims);
        self.scales.truncate(last);
        self.slots[doc] = NO_SLOT;
        if self.docs.is_empty() {
            self.dims = 0;
        }
    }

    /// The cosine of `query` (unit length, the index's dimension) with every vector, in slot
    /// order, at most `VECTORS_SCANNED_MAX`: from the i8 codes (within about 0.01 of the f32
    /// cosine; integer sums, so the same on every machine).
    pub fn scan(&self, query: &[f32]) -> Vec<(DocKey, f32)> {
        if query.len() != self.dims || self.dims == 0 {
            return Vec::new();
        }
        let (query, query_scale) = quantise(query);
        let slots = self.docs.len().min(VECTORS_SCANNED_MAX);
        let mut scored = Vec::with_capacity(slots);
        for (slot, codes) in self.codes.chunks_exact(self.dims).take(slots).enumerate() {
            let cosine = dot_i8(&query, codes) as f32 * query_scale * self.scales[slot];
            scored.push((self.docs[slot], cosine));
        }
        scored
    }

    pub fn check_invariants(&self, indexed: impl Fn(DocKey) -> bool) {
        assert_eq!(self.values.len(), self.docs.len() * self.dims, "vector storage size");
        assert_eq!(self.codes.len(), self.values.len(), "a code for every value");
        assert_eq!(self.scales.len(), self.docs.len(), "a scale for every slot");
        assert_eq!(
            self.docs.is_empty(),
            self.dims == 0,
            "a dimension while empty, or none while not"
        );
        for (slot, &doc) in self.docs.iter().enumerate() {
            assert_eq!(self.slot(doc), Some(slot), "document {doc}'s slot");
            assert!(indexed(doc), "a vector for document {doc}, which is not indexed");
        }
        let slotted = self.slots.iter().filter(|&&s| s != NO_SLOT).count();
        assert_eq!(slotted, self.docs.len(), "slots of documents that left");
    }
}

/// `vector` as i8 codes and the scale that turns them back into values (its largest absolute
/// value over 127; 0 for a zero vector).
fn quantise(vector: &[f32]) -> (Vec<i8>, f32) {
    let largest = vector.iter().fold(0f32, |m, x| m.max(x.abs()));
    if largest == 0.0 {
        return (vec![0; vector.len()], 0.0);
    }
    let scale = largest / 127.0;
    let codes = vector
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (codes, scale)
}

/// The dot product of two i8 code vectors, exact in i32 (384 x 127 x 127 fits easily).
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

/// The dot product, summed in dimension order over four lanes (which the compiler vectorises).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0f32; 4];
    let (a4, a_rest) = a.split_at(a.len() / 4 * 4);
    let (b4, b_rest) = b.split_at(a4.len());
    for (x, y) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        for i in 0..4 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(values: &[f32]) -> Vec<f32> {
        unit(values).expect("a valid vector")
    }

    #[test]
    fn a_scan_scores_every_vector_by_cosine_within_the_i8_codes_precision() {
        let mut index = VectorIndex::default();
        index.set(0, &v(&[1.0, 0.0, 0.0])).expect("stored");
        index.set(3, &v(&[0.0, 1.0, 0.0])).expect("stored");
        index.set(5, &v(&[1.0, 1.0, 0.0])).expect("stored");
        index.check_invariants(|_| true);
        let scored = index.scan(&v(&[1.0, 0.0, 0.0]));
        assert_eq!(scored.len(), 3);
        let cosine = |doc: DocKey| scored.iter().find(|s| s.0 == doc).expect("scored").1;
        assert!((cosine(0) - 1.0).abs() < 1e-2);
        assert!(cosine(3).abs() < 1e-2);
        assert!((cosine(5) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-2);
        assert!(
            index.scan(&v(&[1.0, 0.0])).is_empty(),
            "another dimension scores nothing"
        );
    }

    #[test]
    fn another_dimension_is_refused_until_the_index_is_empty_again() {
        let mut index = VectorIndex::default();
        index.set(1, &v(&[1.0, 2.0])).expect("stored");
        let error = index.set(2, &v(&[1.0, 2.0, 3.0])).expect_err("3 is not 2");
        assert!(error.contains("3 dimensions") && error.contains("have 2"), "{error}");
        index.remove(1);
        index.check_invariants(|_| true);
        assert_eq!(index.dims(), 0);
        index.set(2, &v(&[1.0, 2.0, 3.0])).expect("the index is free again");
    }

    #[test]
    fn removing_moves_the_last_slot_and_keeps_every_vector() {
        let mut index = VectorIndex::default();
        for doc in 0..5 {
            index.set(doc, &v(&[doc as f32 + 1.0, 1.0])).expect("stored");
        }
        index.remove(1);
        index.remove(7);
        index.set(2, &v(&[0.0, 1.0])).expect("replaced");
        index.check_invariants(|_| true);
        assert_eq!(index.len(), 4);
        assert_eq!(index.get(1), None);
        assert_eq!(index.get(2), Some(&v(&[0.0, 1.0])[..]));
        assert_eq!(index.get(4), Some(&v(&[5.0, 1.0])[..]));
    }

    #[test]
    fn each_model_keeps_its_own_vectors_and_a_card_has_one() {
        let (mini, big): (Arc<str>, Arc<str>) = (Arc::from("mini"), Arc::from("big"));
        let mut spaces = VectorSpaces::default();
        spaces.set(0, &mini, &v(&[1.0, 0.0])).expect("stored");
        spaces.set(1, &mini, &v(&[0.0, 1.0])).expect("stored");
        spaces
            .set(2, &big, &v(&[1.0, 0.0]))
            .expect("same dimension, another model");
        spaces
            .set(3, &big, &v(&[1.0, 0.0, 0.0]))
            .expect("another dimension, another index");
        spaces.check_invariants(|_| true);
        assert_eq!(spaces.space("mini", 2).map(VectorIndex::len), Some(2));
        assert_eq!(spaces.space("big", 2).map(VectorIndex::len), Some(1));
        assert_eq!(spaces.space("big", 3).map(VectorIndex::len), Some(1));
        // A new model's vector replaces the card's old one; an index left empty goes.
        spaces.set(2, &mini, &v(&[1.0, 1.0])).expect("replaced");
        spaces.check_invariants(|_| true);
        assert!(spaces.space("big", 2).is_none());
        assert_eq!(spaces.get(2).map(|(m, _)| &**m), Some("mini"));
        assert_eq!(spaces.len(), 4);
        for (n, name) in ["m2", "m3"].into_iter().enumerate() {
            spaces.set(10 + n, &Arc::from(name), &v(&[1.0])).expect("room for four");
        }
        let error = spaces.set(20, &Arc::from("m5"), &v(&[1.0])).expect_err("a fifth model");
        assert!(error.contains("4 models"), "{error}");
        assert!(spaces.get(20).is_none(), "a refused vector changes nothing");
        spaces.check_invariants(|_| true);
        assert!(check_model_name("").is_err() && check_model_name("a\nb").is_err());
        assert!(check_model_name(&"x".repeat(VECTOR_MODEL_NAME_MAX + 1)).is_err());
    }

    #[test]
    fn bad_vectors_are_refused_with_a_reason() {
        assert!(unit(&[]).is_err());
        assert!(unit(&[f32::NAN, 1.0]).unwrap_err().contains("finite"));
        assert!(unit(&[0.0, 0.0]).unwrap_err().contains("zero"));
        assert!(unit(&vec![1.0; VECTOR_DIMS_MAX + 1]).is_err());
        let scaled = unit(&[3.0, 4.0]).expect("valid");
        assert_eq!(scaled, [0.6, 0.8]);
    }
}
