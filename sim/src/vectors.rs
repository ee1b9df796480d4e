//! The simulator's synthetic sentence vectors: what an embedding worker would send, made from a
//! seed instead of a model. Card vectors (`Op::SetCardVector`, and those riding in an
//! `Op::Register`) come from the vector stream of the generator; a Find's query vector is a
//! function of its query text, so `Op::Find` and the traces stay as they were. Three models, two of them of the same dimension, and a second
//! dimension for one: the core must keep all four apart. A quarter of the card vectors are one
//! of a few shared ones (replicas of a card), which the core stores once per model.
//!
//! Architecture invariant: pure functions of their inputs (no RNG state, no clock): a trace
//! replays to the same vectors.

use agentkeeper::core::search::card_text::card_digest;
use agentkeeper::core::search::vectors::{BUILTIN_MODEL, CardVector, ModelVector};
use agentkeeper::core::types::AgentCard;

use crate::step::RegisterVector;

/// The models the simulated workers name, each with its usual dimension.
pub const MODELS: [(&str, usize); 3] = [(BUILTIN_MODEL, 8), ("sim-embed-a", 8), ("sim-embed-b", 5)];
/// The other dimension `sim-embed-b` sometimes has (a model reconfigured): its own index.
pub const OTHER_DIMS: usize = 3;

/// `dims` values in -1..1 from `seed` (splitmix64); all zeros when `zero` (a vector with no
/// direction, which the core refuses).
pub fn values(seed: u64, dims: usize, zero: bool) -> Vec<f32> {
    let mut state = seed;
    (0..dims)
        .map(|_| {
            if zero {
                return 0.0;
            }
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Seeds a quarter of the card vectors come from (those whose seed is a multiple of 4 take it
/// modulo this): the same vector for many agents, as replicas of one card have, which the core
/// stores once.
pub const SHARED_SEEDS: u64 = 4;

/// The card vector a `SetCardVector` step sends: model `model` (an index into `MODELS`), its
/// usual dimension or `OTHER_DIMS`; a quarter of them one of `SHARED_SEEDS` shared vectors.
pub fn card_vector(model: u8, other_dims: bool, seed: u64, zero: bool) -> ModelVector {
    let seed = if seed.is_multiple_of(4) {
        seed % (4 * SHARED_SEEDS)
    } else {
        seed
    };
    let (name, dims) = MODELS[usize::from(model) % MODELS.len()];
    let dims = if other_dims && name == "sim-embed-b" {
        OTHER_DIMS
    } else {
        dims
    };
    ModelVector::new(name, values(seed, dims, zero))
}

/// The vector a Register step carries for `card`: `card_vector`'s, named by the card's digest
/// (one bit off if `stale`).
pub fn register_vector(card: &AgentCard, vector: &RegisterVector) -> CardVector {
    let mut digest = card_digest(card);
    if vector.stale {
        digest.0[0] ^= 1;
    }
    CardVector {
        card_digest: digest,
        vector: card_vector(vector.model, vector.other_dims, vector.seed, vector.zero),
    }
}

/// A Find's query vector, decided by its text (FNV-1a): none for a quarter of the queries (and
/// for the empty query), else one of the models' at its usual dimension.
pub fn query_vector(query: &str) -> Option<ModelVector> {
    if query.is_empty() {
        return None;
    }
    let hash = query.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    if hash % 4 == 3 {
        return None;
    }
    let (name, dims) = MODELS[(hash >> 8) as usize % MODELS.len()];
    Some(ModelVector::new(name, values(hash, dims, false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_and_of_their_models_dimension() {
        assert_eq!(values(7, 8, false), values(7, 8, false));
        assert_ne!(values(7, 8, false), values(8, 8, false));
        assert!(values(7, 8, false).iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(values(7, 5, true).iter().all(|&x| x == 0.0));
        assert_eq!(card_vector(2, true, 1, false).values.len(), OTHER_DIMS);
        assert_eq!(card_vector(1, true, 1, false).values.len(), 8);
        assert_eq!(
            card_vector(0, false, 4, false),
            card_vector(0, false, 4 + 4 * SHARED_SEEDS, false)
        );
        assert_ne!(
            card_vector(0, false, 5, false),
            card_vector(0, false, 5 + 4 * SHARED_SEEDS, false)
        );
        assert_eq!(query_vector("pdf pages"), query_vector("pdf pages"));
        assert_eq!(query_vector(""), None);
    }
}
