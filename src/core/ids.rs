//! The core's only source of randomness: a ChaCha8 stream seeded once, from which agent ids,
//! task ids and hash seeds are drawn.
//!
//! Architecture invariant: nothing here asks the OS for entropy; the driver picks the seed (from
//! `--seed` or the OS, once, at start-up) and the same seed gives the same ids.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::types::Id128;

pub struct IdSource {
    pub(super) rng: ChaCha8Rng,
}

impl IdSource {
    pub fn new(seed: u64) -> Self {
        IdSource {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A fresh 128-bit id. Callers check it against the ids in use: a repeat is astronomically
    /// unlikely, not impossible.
    pub fn next_id(&mut self) -> Id128 {
        let high = u128::from(self.rng.next_u64());
        let low = u128::from(self.rng.next_u64());
        Id128(high << 64 | low)
    }

    /// A seed for the core's hash maps.
    pub fn hash_seed(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_ids_and_other_seeds_differ() {
        let mut a = IdSource::new(7);
        let mut b = IdSource::new(7);
        let mut c = IdSource::new(8);
        let first = a.next_id();
        assert_eq!(first, b.next_id());
        assert_ne!(first, c.next_id());
        assert_ne!(first, a.next_id());
        assert_eq!(first.to_string().len(), 32);
    }
}
