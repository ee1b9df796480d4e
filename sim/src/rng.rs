//! The simulator's one source of randomness: a ChaCha8 stream from the run's seed, with the few
//! draws the workload needs. No OS entropy, no `rand` distributions whose output could change
//! between crate versions: the same seed gives the same run on any machine.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

pub struct Rng {
    stream: ChaCha8Rng,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng {
            stream: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent stream of the same seed: draws from it never shift the main stream's, so a
    /// seed's other choices stay what they were whether or not this stream is used.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Rng { stream: rng }
    }

    pub fn u64(&mut self) -> u64 {
        self.stream.next_u64()
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-32 for our small `n`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no value to return");
        ((u128::from(self.u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range {low}..={high}");
        low + self.below(high - low + 1)
    }

    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// An index drawn with the given weights; `None` when they are all zero.
    pub fn weighted(&mut self, weights: &[u32]) -> Option<usize> {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut draw = self.below(total);
        for (index, &weight) in weights.iter().enumerate() {
            if draw < u64::from(weight) {
                return Some(index);
            }
            draw -= u64::from(weight);
        }
        unreachable!("a draw below the total falls in some weight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_draws_stay_in_range() {
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        for _ in 0..1000 {
            assert_eq!(a.u64(), b.u64());
            let r = a.range(3, 5);
            b.range(3, 5);
            assert!((3..=5).contains(&r));
        }
        assert_eq!(a.weighted(&[0, 0]), None);
        assert_eq!(a.weighted(&[0, 7, 0]), Some(1));
    }
}
