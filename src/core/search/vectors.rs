//! Card vectors for Find's semantic half, interned: each distinct unit-length f32 vector of a
//! (model, dimension) is stored once, as given (snapshots carry every agent's bit for bit) and,
//! for the scan, as i8 codes with a scale (contiguous, slot-major: a quarter of the bytes to read
//! per query), with the count of documents that reference it. Replicas of one card (one text, one
//! vector) share a slot: 100,000 replicas of 10 cards store 10 vectors, and a scan scores 10. The
//! bounded scan scores a query vector against each distinct vector by cosine (a dot product, the
//! vectors being unit length); `hybrid` expands the scores to the documents, each slot's kept in
//! rank order.
//!
//! Every vector comes with the name of the model that made it, and one ranking never mixes two
//! models: `VectorSpaces` keeps each (model, dimension) apart, a card has one vector (a vector
//! from another model replaces it), and a query vector is scored only against its own model's.
//!
//! Architecture invariant: a vector comes from a command (the network side computed it); nothing
//! here computes one from text. Two documents share a slot only when their vectors' bits are
//! equal (the key is a seeded hash of the bits, then an equality check), never merely close; a
//! slot's count is the documents that map to it, the last to leave frees it, and free slots are
//! reused lowest first (hash order never decides anything). Every vector of a `VectorIndex` has
//! its dimension (set by the first, free again once the index is empty); a scan reads at most
//! `VECTORS_SCANNED_MAX` distinct vectors, in slot order, and sums each dot product in dimension
//! order, so equal inputs give equal scores.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use super::DocKey;
use super::card_text::CardDigest;

/// Dimensions of a card vector at most (all-MiniLM-L6-v2 has 384; external embedders up to 4096).
pub const VECTOR_DIMS_MAX: usize = 4096;
/// Distinct vectors one query scores at most: 100,000 distinct cards' worth of 384-d i8 codes is
/// 38 MB read and ~38M multiply-adds, about 6 ms of the core's time (replicas of a card share its
/// vector: they cost nothing more). Beyond, the slots after the bound are not scored semantically
/// (lexical matches still are).
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
pub struct VectorSpaces {
    spaces: Vec<(Arc<str>, VectorIndex)>,
    hash_seed: u64,
}

impl VectorSpaces {
    /// No vectors yet; each index's interning hash is seeded with `hash_seed`.
    pub fn new(hash_seed: u64) -> VectorSpaces {
        VectorSpaces {
            spaces: Vec::new(),
            hash_seed,
        }
    }

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

    /// Stores `vector` (unit length) as `doc`'s, made by `model`, `rank` ordering it among equals,
    /// replacing any vector it had (of any model); refused, changing nothing, when
    /// `VECTOR_MODELS_MAX` other models are held.
    pub fn set(&mut self, doc: DocKey, rank: u64, model: &Arc<str>, vector: &[f32]) -> Result<(), String> {
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
            self.spaces.push((Arc::clone(model), VectorIndex::new(self.hash_seed)));
            self.spaces.len() - 1
        });
        self.spaces[position].1.set(doc, rank, vector)?;
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
                    index.docs().all(|doc| other_index.get(doc).is_none()),
                    "a document with vectors of {name} and {other}"
                );
            }
        }
    }
}

/// One (model, dimension)'s card vectors, interned: each distinct vector (by its exact bits) is
/// stored once in a slot with the count of documents that reference it.
pub struct VectorIndex {
    /// 0 while empty.
    dims: usize,
    /// `dims` values per slot (a free slot's are stale until reused).
    values: Vec<f32>,
    /// `dims` i8 codes per slot: the values over the slot's scale, rounded.
    codes: Vec<i8>,
    /// Each slot's scale: its largest absolute value / 127.
    scales: Vec<f32>,
    /// Documents referencing each slot (0: the slot is free).
    refs: Vec<u32>,
    /// Each slot's best-ranked document (rank, key): where Find's expansion of the slot starts.
    heads: Vec<(u64, DocKey)>,
    /// Each live slot's hash of its values' bits.
    hashes: Vec<u64>,
    /// The live slots, found by their values' hash (equal bits, never merely equal values).
    by_value: HashTable<u32>,
    /// Free slots below the last live one: the lowest is reused first.
    free: BTreeSet<u32>,
    /// Every document with a vector here as (slot, rank, key): each slot's documents in rank
    /// order, so Find expands a slot to its best-ranked documents without reading the rest.
    members: BTreeSet<(u32, u64, DocKey)>,
    /// Each document's slot and rank, by document key (`NO_SLOT`: none).
    slots: Vec<(u32, u64)>,
    /// Documents with a vector here.
    docs: usize,
    hasher: FixedState,
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
    /// An empty index whose interning hash is seeded with `hash_seed`.
    pub fn new(hash_seed: u64) -> VectorIndex {
        VectorIndex {
            dims: 0,
            values: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            refs: Vec::new(),
            heads: Vec::new(),
            hashes: Vec::new(),
            by_value: HashTable::new(),
            free: BTreeSet::new(),
            members: BTreeSet::new(),
            slots: Vec::new(),
            docs: 0,
            hasher: FixedState::with_seed(hash_seed),
        }
    }

    /// Documents with a vector here.
    pub fn len(&self) -> usize {
        self.docs
    }

    pub fn is_empty(&self) -> bool {
        self.docs == 0
    }

    /// Distinct vectors stored (each once, however many documents share it).
    pub fn distinct(&self) -> usize {
        self.refs.len() - self.free.len()
    }

    /// The dimension every vector here has (0 while empty).
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// `doc`'s slot, if it has a vector here.
    pub fn slot_of(&self, doc: DocKey) -> Option<u32> {
        let &(slot, _) = self.slots.get(doc)?;
        (slot != NO_SLOT).then_some(slot)
    }

    fn vector(&self, slot: u32) -> &[f32] {
        let slot = slot as usize;
        &self.values[slot * self.dims..(slot + 1) * self.dims]
    }

    pub fn get(&self, doc: DocKey) -> Option<&[f32]> {
        self.slot_of(doc).map(|slot| self.vector(slot))
    }

    /// The documents of every slot, in slot then rank order.
    pub fn docs(&self) -> impl Iterator<Item = DocKey> + '_ {
        self.members.iter().map(|&(_, _, doc)| doc)
    }

    /// `slot`'s best-ranked document (rank, key); the slot must be live.
    pub fn first_of(&self, slot: u32) -> (u64, DocKey) {
        debug_assert!(self.refs[slot as usize] > 0);
        self.heads[slot as usize]
    }

    /// The document of `slot` ranked next after (`rank`, `doc`), if any.
    pub fn next_of(&self, slot: u32, rank: u64, doc: DocKey) -> Option<(u64, DocKey)> {
        self.members
            .range((Excluded((slot, rank, doc)), Unbounded))
            .next()
            .filter(|m| m.0 == slot)
            .map(|&(_, rank, doc)| (rank, doc))
    }

    /// The hash of `vector`'s bits (little-endian, in dimension order).
    fn hash_of(&self, vector: &[f32]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        let mut bytes = [0u8; 256];
        for chunk in vector.chunks(64) {
            for (i, x) in chunk.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&x.to_bits().to_le_bytes());
            }
            hasher.write(&bytes[..4 * chunk.len()]);
        }
        hasher.finish()
    }

    /// The live slot holding exactly `vector`'s bits, if any.
    fn find(&self, hash: u64, vector: &[f32]) -> Option<u32> {
        self.by_value
            .find(hash, |&slot| same_bits(self.vector(slot), vector))
            .copied()
    }

    /// Stores `vector` (unit length, see `unit`) as `doc`'s, ranked `rank` among equals (its
    /// agent's registration), replacing one it had; refused when its dimension is not the
    /// index's. A vector already stored (the same bits) is shared: a lookup and a count, no copy.
    pub fn set(&mut self, doc: DocKey, rank: u64, vector: &[f32]) -> Result<(), String> {
        debug_assert!((vector.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-3);
        if self.dims != 0 && vector.len() != self.dims {
            return Err(format!(
                "the vector has {} dimensions; the card vectors held have {}",
                vector.len(),
                self.dims
            ));
        }
        if self.get(doc).is_some_and(|held| same_bits(held, vector)) && self.slots[doc].1 == rank {
            return Ok(());
        }
        self.remove(doc);
        self.dims = vector.len();
        let hash = self.hash_of(vector);
        let slot = match self.find(hash, vector) {
            Some(slot) => {
                self.refs[slot as usize] += 1;
                let head = &mut self.heads[slot as usize];
                *head = (*head).min((rank, doc));
                slot
            }
            None => self.store(hash, vector, (rank, doc)),
        };
        if self.slots.len() <= doc {
            self.slots.resize(doc + 1, (NO_SLOT, 0));
        }
        self.slots[doc] = (slot, rank);
        self.members.insert((slot, rank, doc));
        self.docs += 1;
        Ok(())
    }

    /// Stores a vector not held yet in the lowest free slot (or a new one), referenced once.
    fn store(&mut self, hash: u64, vector: &[f32], head: (u64, DocKey)) -> u32 {
        let (codes, scale) = quantise(vector);
        let slot = match self.free.pop_first() {
            Some(slot) => {
                let at = slot as usize;
                self.values[at * self.dims..(at + 1) * self.dims].copy_from_slice(vector);
                self.codes[at * self.dims..(at + 1) * self.dims].copy_from_slice(&codes);
                self.scales[at] = scale;
                self.refs[at] = 1;
                self.heads[at] = head;
                self.hashes[at] = hash;
                slot
            }
            None => {
                let slot = u32::try_from(self.refs.len()).expect("fewer than 2^32 vectors");
                assert_ne!(slot, NO_SLOT, "fewer than 2^32 - 1 vectors");
                self.values.extend_from_slice(vector);
                self.codes.extend_from_slice(&codes);
                self.scales.push(scale);
                self.refs.push(1);
                self.heads.push(head);
                self.hashes.push(hash);
                slot
            }
        };
        let hashes = &self.hashes;
        self.by_value.insert_unique(hash, slot, |&s| hashes[s as usize]);
        slot
    }

    /// Forgets `doc`'s vector, if it has one: the slot's last reference frees it (a free slot at
    /// the end is given back, the others are reused lowest first).
    pub fn remove(&mut self, doc: DocKey) {
        let Some(slot) = self.slot_of(doc) else { return };
        let rank = self.slots[doc].1;
        self.slots[doc] = (NO_SLOT, 0);
        let removed = self.members.remove(&(slot, rank, doc));
        debug_assert!(removed, "a document with a slot is among its members");
        self.docs -= 1;
        let at = slot as usize;
        self.refs[at] -= 1;
        if self.refs[at] > 0 {
            if self.heads[at] == (rank, doc) {
                let next = self.members.range((slot, 0, 0)..).next();
                self.heads[at] = next
                    .map(|&(_, rank, doc)| (rank, doc))
                    .expect("a slot still referenced");
            }
            return;
        }
        match self.by_value.find_entry(self.hashes[at], |&s| s == slot) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => unreachable!("a live slot is in the interning table"),
        }
        self.free.insert(slot);
        while let Some(&last) = self.free.last()
            && last as usize + 1 == self.refs.len()
        {
            self.free.pop_last();
            let at = last as usize;
            self.values.truncate(at * self.dims);
            self.codes.truncate(at * self.dims);
            self.scales.truncate(at);
            self.refs.truncate(at);
            self.heads.truncate(at);
            self.hashes.truncate(at);
        }
        if self.docs == 0 {
            self.dims = 0;
        }
    }

    /// The cosine of `query` (unit length, the index's dimension) with every distinct vector, as
    /// (slot, cosine) in slot order, at most `VECTORS_SCANNED_MAX` of them: from the i8 codes
    /// (within about 0.01 of the f32 cosine; integer sums, so the same on every machine). Free
    /// slots are skipped unread (there are fewer of them than the most distinct vectors held).
    pub fn scan(&self, query: &[f32]) -> Vec<(u32, f32)> {
        if query.len() != self.dims || self.dims == 0 {
            return Vec::new();
        }
        let (query, query_scale) = quantise(query);
        let mut scored = Vec::with_capacity(self.distinct().min(VECTORS_SCANNED_MAX));
        for (slot, codes) in self.codes.chunks_exact(self.dims).enumerate() {
            if self.refs[slot] == 0 {
                continue;
            }
            if scored.len() == VECTORS_SCANNED_MAX {
                break;
            }
            let cosine = dot_i8(&query, codes) as f32 * query_scale * self.scales[slot];
            scored.push((slot as u32, cosine));
        }
        scored
    }

    pub fn check_invariants(&self, indexed: impl Fn(DocKey) -> bool) {
        let slots = self.refs.len();
        assert_eq!(self.values.len(), slots * self.dims, "vector storage size");
        assert_eq!(self.codes.len(), self.values.len(), "a code for every value");
        assert_eq!(self.scales.len(), slots, "a scale for every slot");
        assert_eq!(self.heads.len(), slots, "a head for every slot");
        assert_eq!(self.hashes.len(), slots, "a hash for every slot");
        assert_eq!(
            self.docs == 0,
            self.dims == 0,
            "a dimension while empty, or none while not"
        );
        assert_eq!(self.docs == 0, slots == 0, "slots kept while empty");
        assert!(self.refs.last().is_none_or(|&r| r > 0), "a free slot at the end");
        let mut referenced = vec![0u32; slots];
        let mut heads: Vec<Option<(u64, DocKey)>> = vec![None; slots];
        for &(slot, rank, doc) in &self.members {
            assert!((slot as usize) < slots, "document {doc} in a slot past the end");
            assert_eq!(
                self.slots.get(doc),
                Some(&(slot, rank)),
                "document {doc}'s slot and rank"
            );
            assert!(indexed(doc), "a vector for document {doc}, which is not indexed");
            referenced[slot as usize] += 1;
            heads[slot as usize].get_or_insert((rank, doc));
        }
        assert_eq!(self.members.len(), self.docs, "documents counted");
        let slotted = self.slots.iter().filter(|s| s.0 != NO_SLOT).count();
        assert_eq!(slotted, self.docs, "slots of documents that left");
        assert_eq!(
            referenced, self.refs,
            "each slot's count is the documents referencing it"
        );
        for (slot, head) in heads.into_iter().enumerate() {
            let live = self.refs[slot] > 0;
            assert_eq!(
                !live,
                self.free.contains(&(slot as u32)),
                "slot {slot} free exactly when unreferenced"
            );
            if live {
                assert_eq!(head, Some(self.heads[slot]), "slot {slot}'s best-ranked document");
                let vector = self.vector(slot as u32);
                assert_eq!(self.hashes[slot], self.hash_of(vector), "slot {slot}'s hash");
                assert_eq!(
                    self.find(self.hashes[slot], vector),
                    Some(slot as u32),
                    "slot {slot} interned"
                );
                assert_eq!(
                    quantise(vector),
                    (
                        self.codes[slot * self.dims..(slot + 1) * self.dims].to_vec(),
                        self.scales[slot]
                    ),
                    "slot {slot}'s codes"
                );
            }
        }
        assert_eq!(
            self.by_value.len(),
            self.distinct(),
            "the interning table holds the live slots alone"
        );
    }
}

/// True when `a` and `b` hold the same bits (0.0 and -0.0 differ: a snapshot keeps the bits).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
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

    /// Sets `doc`'s vector with the document key as its rank (as the search index's tests do).
    fn set(index: &mut VectorIndex, doc: DocKey, vector: &[f32]) {
        index.set(doc, doc as u64, vector).expect("stored");
        index.check_invariants(|_| true);
    }

    #[test]
    fn a_scan_scores_every_vector_by_cosine_within_the_i8_codes_precision() {
        let mut index = VectorIndex::new(0);
        set(&mut index, 0, &v(&[1.0, 0.0, 0.0]));
        set(&mut index, 3, &v(&[0.0, 1.0, 0.0]));
        set(&mut index, 5, &v(&[1.0, 1.0, 0.0]));
        let scored = index.scan(&v(&[1.0, 0.0, 0.0]));
        assert_eq!(scored.len(), 3);
        let cosine = |doc: DocKey| {
            let slot = index.slot_of(doc).expect("a slot");
            scored.iter().find(|s| s.0 == slot).expect("scored").1
        };
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
        let mut index = VectorIndex::new(0);
        set(&mut index, 1, &v(&[1.0, 2.0]));
        let error = index.set(2, 2, &v(&[1.0, 2.0, 3.0])).expect_err("3 is not 2");
        assert!(error.contains("3 dimensions") && error.contains("have 2"), "{error}");
        index.remove(1);
        index.check_invariants(|_| true);
        assert_eq!(index.dims(), 0);
        set(&mut index, 2, &v(&[1.0, 2.0, 3.0]));
    }

    #[test]
    fn removing_and_replacing_keep_every_other_vector() {
        let mut index = VectorIndex::new(0);
        for doc in 0..5 {
            set(&mut index, doc, &v(&[doc as f32 + 1.0, 1.0]));
        }
        index.remove(1);
        index.remove(7);
        set(&mut index, 2, &v(&[0.0, 1.0]));
        assert_eq!(index.len(), 4);
        assert_eq!(index.distinct(), 4);
        assert_eq!(index.get(1), None);
        assert_eq!(index.get(2), Some(&v(&[0.0, 1.0])[..]));
        assert_eq!(index.get(4), Some(&v(&[5.0, 1.0])[..]));
    }

    #[test]
    fn a_thousand_replicas_share_one_stored_vector() {
        let mut index = VectorIndex::new(7);
        let card = v(&[0.3, -0.2, 0.9]);
        for doc in 0..1000 {
            index.set(doc, doc as u64, &card).expect("stored");
        }
        index.check_invariants(|_| true);
        assert_eq!(index.len(), 1000);
        assert_eq!(index.distinct(), 1);
        assert_eq!(index.values.len(), 3, "one vector's values, however many replicas");
        assert_eq!(index.codes.len(), 3);
        assert!((0..1000).all(|doc| index.slot_of(doc) == Some(0)));
        assert_eq!(index.scan(&card).len(), 1, "a scan scores the vector once");
        // Setting the same vector again changes nothing.
        index.set(10, 10, &card).expect("the same");
        index.check_invariants(|_| true);
        assert_eq!((index.len(), index.distinct()), (1000, 1));
    }

    #[test]
    fn a_shared_vector_is_freed_with_its_last_replica_and_its_slot_reused_lowest_first() {
        let mut index = VectorIndex::new(0);
        let (a, b, c) = (v(&[1.0, 0.0]), v(&[0.0, 1.0]), v(&[1.0, 1.0]));
        for doc in 0..3 {
            set(&mut index, doc, &a);
        }
        set(&mut index, 3, &b);
        set(&mut index, 4, &c);
        assert_eq!(index.distinct(), 3);
        index.remove(0);
        index.remove(2);
        index.check_invariants(|_| true);
        assert_eq!(index.distinct(), 3, "a vector stays while a replica references it");
        assert_eq!(index.get(1), Some(&a[..]));
        assert_eq!(index.first_of(0), (1, 1), "the remaining replica heads the slot");
        index.remove(1);
        index.check_invariants(|_| true);
        assert_eq!(index.distinct(), 2, "the last replica frees the vector");
        assert_eq!(index.scan(&a).len(), 2, "a free slot is not scored");
        set(&mut index, 5, &v(&[-1.0, 0.5]));
        assert_eq!(index.slot_of(5), Some(0), "the lowest free slot is reused");
        // Freeing the last slots gives them back.
        index.remove(4);
        index.remove(3);
        index.check_invariants(|_| true);
        assert_eq!(index.refs.len(), 1);
        index.remove(5);
        index.check_invariants(|_| true);
        assert_eq!((index.len(), index.dims(), index.refs.len()), (0, 0, 0));
    }

    #[test]
    fn replacing_one_replicas_vector_leaves_the_others_intact() {
        let mut index = VectorIndex::new(0);
        let (old, new) = (v(&[1.0, 2.0, 3.0]), v(&[3.0, 2.0, 1.0]));
        for doc in 0..4 {
            set(&mut index, doc, &old);
        }
        set(&mut index, 0, &new);
        assert_eq!(index.get(0), Some(&new[..]));
        assert!((1..4).all(|doc| index.get(doc) == Some(&old[..])));
        assert_eq!(index.distinct(), 2);
        assert_eq!(index.first_of(index.slot_of(1).expect("a slot")), (1, 1));
        // Another model's vector (another index) replaces a replica's: it leaves this one alone.
        let (mini, big): (Arc<str>, Arc<str>) = (Arc::from("mini"), Arc::from("big"));
        let mut spaces = VectorSpaces::new(0);
        for doc in 0..4 {
            spaces.set(doc, doc as u64, &mini, &old).expect("stored");
        }
        spaces.set(2, 2, &big, &old).expect("another model");
        spaces.check_invariants(|_| true);
        let minis = spaces.space("mini", 3).expect("mini's vectors");
        assert_eq!((minis.len(), minis.distinct()), (3, 1));
        assert_eq!(spaces.get(2).map(|(m, _)| &**m), Some("big"));
        assert!([0, 1, 3].iter().all(|&doc| spaces.get(doc) == Some((&mini, &old[..]))));
    }

    #[test]
    fn vectors_that_differ_in_one_bit_are_never_merged() {
        let mut index = VectorIndex::new(0);
        let a = v(&[0.6, 0.8]);
        let mut b = a.clone();
        b[0] = f32::from_bits(a[0].to_bits() + 1);
        let (zero, negative_zero) = (vec![0.0, 1.0], vec![-0.0, 1.0]);
        set(&mut index, 0, &a);
        set(&mut index, 1, &b);
        set(&mut index, 2, &zero);
        set(&mut index, 3, &negative_zero);
        assert_eq!(index.distinct(), 4);
        for (doc, vector) in [&a, &b, &zero, &negative_zero].into_iter().enumerate() {
            let held = index.get(doc).expect("held");
            assert!(same_bits(held, vector), "document {doc} keeps its bits");
        }
    }

    #[test]
    fn a_slots_documents_come_in_rank_order_whatever_order_they_came_in() {
        let mut index = VectorIndex::new(0);
        let card = v(&[1.0, 1.0]);
        for (doc, rank) in [(4, 40), (1, 90), (7, 10), (2, 50)] {
            index.set(doc, rank, &card).expect("stored");
        }
        index.check_invariants(|_| true);
        let mut order = vec![index.first_of(0)];
        while let Some(&(rank, doc)) = order.last() {
            match index.next_of(0, rank, doc) {
                Some(next) => order.push(next),
                None => break,
            }
        }
        assert_eq!(order, [(10, 7), (40, 4), (50, 2), (90, 1)]);
        index.remove(7);
        assert_eq!(index.first_of(0), (40, 4), "the next best heads the slot");
        index.check_invariants(|_| true);
    }

    #[test]
    fn each_model_keeps_its_own_vectors_and_a_card_has_one() {
        let (mini, big): (Arc<str>, Arc<str>) = (Arc::from("mini"), Arc::from("big"));
        let mut spaces = VectorSpaces::new(0);
        spaces.set(0, 0, &mini, &v(&[1.0, 0.0])).expect("stored");
        spaces.set(1, 1, &mini, &v(&[0.0, 1.0])).expect("stored");
        spaces
            .set(2, 2, &big, &v(&[1.0, 0.0]))
            .expect("same dimension, another model");
        spaces
            .set(3, 3, &big, &v(&[1.0, 0.0, 0.0]))
            .expect("another dimension, another index");
        spaces.check_invariants(|_| true);
        assert_eq!(spaces.space("mini", 2).map(VectorIndex::len), Some(2));
        assert_eq!(spaces.space("big", 2).map(VectorIndex::len), Some(1));
        assert_eq!(spaces.space("big", 3).map(VectorIndex::len), Some(1));
        // A new model's vector replaces the card's old one; an index left empty goes.
        spaces.set(2, 2, &mini, &v(&[1.0, 1.0])).expect("replaced");
        spaces.check_invariants(|_| true);
        assert!(spaces.space("big", 2).is_none());
        assert_eq!(spaces.get(2).map(|(m, _)| &**m), Some("mini"));
        assert_eq!(spaces.len(), 4);
        for (n, name) in ["m2", "m3"].into_iter().enumerate() {
            spaces
                .set(10 + n, 10 + n as u64, &Arc::from(name), &v(&[1.0]))
                .expect("room for four");
        }
        let error = spaces
            .set(20, 20, &Arc::from("m5"), &v(&[1.0]))
            .expect_err("a fifth model");
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
