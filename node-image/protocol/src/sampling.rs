//! Deterministic, unbiased sampling from the randomness beacon (see `beacon`; nobody could
//! know it when claims were committed or revealed). Every node derives the same validator assignments and segment
//! indices from the same beacon.

use crate::crypto::Address;
use crate::hash::Hash;
use crate::tx::TaskId;

/// A stream of uniform integers from a seed: `SHA-256(seed ‖ counter)`.
pub struct BeaconRng {
    seed: Hash,
    counter: u64,
}

impl BeaconRng {
    pub fn new(seed: Hash) -> BeaconRng {
        BeaconRng { seed, counter: 0 }
    }

    pub fn next_u64(&mut self) -> u64 {
        let h = Hash::tagged("pot/rng", &[&self.seed.0, &self.counter.to_le_bytes()]);
        self.counter += 1;
        h.low_u64()
    }

    /// Uniform in `0..n` (rejection sampling: no modulo bias). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "empty range");
        // The largest multiple of n that fits; values at or above it are redrawn.
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// `k` distinct values from `0..n`, ascending, each subset equally likely (Floyd's
    /// algorithm: `k` draws, no allocation proportional to `n`). Takes all of `0..n` if `k >= n`.
    pub fn distinct(&mut self, n: u64, k: u64) -> Vec<u64> {
        let k = k.min(n);
        let mut chosen = std::collections::BTreeSet::new();
        for j in (n - k)..n {
            let t = self.below(j + 1);
            if !chosen.insert(t) {
                chosen.insert(j);
            }
        }
        chosen.into_iter().collect()
    }
}

/// `v` distinct validators for `miner`'s claim, from `eligible` (ascending, already without
/// the miner and the client). Returned ascending.
pub fn assign_validators(
    beacon: &Hash,
    task: &TaskId,
    miner: &Address,
    eligible: &[Address],
    v: u32,
) -> Vec<Address> {
    let seed = Hash::tagged("pot/assign", &[&beacon.0, &task.0, &miner.0]);
    pick(seed, eligible, v)
}

/// The `s` segment indices (of `segments`) that `validator` replays for `miner`'s claim: each
/// validator its own sample, so no replay can be shared among them.
pub fn sample_segments(
    beacon: &Hash,
    task: &TaskId,
    miner: &Address,
    validator: &Address,
    segments: u64,
    s: u32,
) -> Vec<u32> {
    let seed = Hash::tagged(
        "pot/segments",
        &[&beacon.0, &task.0, &miner.0, &validator.0],
    );
    BeaconRng::new(seed)
        .distinct(segments, u64::from(s))
        .into_iter()
        .map(|i| u32::try_from(i).expect("segment counts are bounded by u32 at submission"))
        .collect()
}

/// The committee that replays the segment disputed by challenge number `index`.
pub fn challenge_committee(
    beacon: &Hash,
    task: &TaskId,
    index: u32,
    eligible: &[Address],
    v: u32,
) -> Vec<Address> {
    let seed = Hash::tagged("pot/committee", &[&beacon.0, &task.0, &index.to_le_bytes()]);
    pick(seed, eligible, v)
}

fn pick(seed: Hash, eligible: &[Address], k: u32) -> Vec<Address> {
    BeaconRng::new(seed)
        .distinct(eligible.len() as u64, u64::from(k))
        .into_iter()
        .map(|i| eligible[i as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn below_is_uniform_enough() {
        // 60,000 draws into 6 bins: each bin within 3% of 10,000 (about 6 standard deviations).
        let mut rng = BeaconRng::new(Hash::digest(b"uniform"));
        let mut bins = [0u32; 6];
        for _ in 0..60_000 {
            bins[rng.below(6) as usize] += 1;
        }
        for b in bins {
            assert!((9_700..=10_300).contains(&b), "{bins:?}");
        }
    }

    #[test]
    fn distinct_subsets_are_uniform() {
        // Choosing 2 of 4 has 6 subsets; each should come up about 1/6 of the time.
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..12_000u64 {
            let mut rng = BeaconRng::new(Hash::digest(&i.to_le_bytes()));
            *counts.entry(rng.distinct(4, 2)).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 6);
        for (subset, c) in &counts {
            assert!((1_800..=2_200).contains(c), "{subset:?}: {c} of 12000");
        }
    }

    #[test]
    fn each_validator_is_assigned_about_equally() {
        let eligible: Vec<Address> = (0..10u8).map(|i| Address([i; 32])).collect();
        let mut counts = [0u32; 10];
        for i in 0..3_000u64 {
            let beacon = Hash::digest(&i.to_le_bytes());
            for a in assign_validators(&beacon, &Hash::ZERO, &Address([99; 32]), &eligible, 3) {
                counts[a.0[0] as usize] += 1;
            }
        }
        // Expected 900 each.
        for c in counts {
            assert!((780..=1_020).contains(&c), "{counts:?}");
        }
    }

    proptest! {
        #[test]
        fn distinct_is_sorted_unique_in_range(seed: [u8; 32], n in 0u64..200, k in 0u64..50) {
            let v = BeaconRng::new(Hash(seed)).distinct(n, k);
            prop_assert_eq!(v.len() as u64, k.min(n));
            prop_assert!(v.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(v.iter().all(|&x| x < n));
            // Deterministic: the same seed gives the same sample.
            prop_assert_eq!(v, BeaconRng::new(Hash(seed)).distinct(n, k));
        }

        #[test]
        fn segments_are_in_range(beacon: [u8; 32], n in 1u64..1_000_000, s in 1u32..20) {
            let segs = sample_segments(
                &Hash(beacon),
                &Hash::ZERO,
                &Address::default(),
                &Address([1; 32]),
                n,
                s,
            );
            prop_assert_eq!(segs.len() as u64, u64::from(s).min(n));
            prop_assert!(segs.iter().all(|&i| u64::from(i) < n));
        }
    }
}
