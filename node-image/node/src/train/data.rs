//! Datasets as tensors, and the per-epoch data order derived from the run seed.

use pot_protocol::Hash;
use pot_protocol::sampling::BeaconRng;
use tch::{Kind, Tensor};

/// Features `x` (`[n, d]`, f32) and class labels `y` (`[n]`, i64).
#[derive(Debug)]
pub struct Dataset {
    pub x: Tensor,
    pub y: Tensor,
    pub classes: i64,
    /// `[channels, height, width]` when the features are images (convolutional models need it).
    pub image: Option<[i64; 3]>,
}

impl Dataset {
    pub fn len(&self) -> i64 {
        self.x.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn features(&self) -> i64 {
        self.x.size()[1]
    }

    /// Rows `idx` as a batch.
    pub fn batch(&self, idx: &[i64]) -> (Tensor, Tensor) {
        let i = Tensor::from_slice(idx);
        (self.x.index_select(0, &i), self.y.index_select(0, &i))
    }
}

/// Uniform in [0, 1) from 53 random bits.
fn unit(rng: &mut BeaconRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut BeaconRng) -> f64 {
    let u1 = unit(rng).max(f64::MIN_POSITIVE);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `classes` Gaussian blobs in `dims` dimensions, `n` points in all, from `seed`. The
/// generator is ours, not libtorch's, so the same seed gives the same data everywhere.
pub fn blobs(seed: u64, n: usize, dims: usize, classes: usize) -> Dataset {
    let mut rng = BeaconRng::new(Hash::tagged("pot/data/blobs", &[&seed.to_le_bytes()]));
    let centers: Vec<Vec<f64>> = (0..classes)
        .map(|_| (0..dims).map(|_| normal(&mut rng) * 3.0).collect())
        .collect();
    let mut x = Vec::with_capacity(n * dims);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        for center in centers[c].iter().take(dims) {
            x.push((center + normal(&mut rng)) as f32);
        }
        y.push(c as i64);
    }
    Dataset {
        x: Tensor::from_slice(&x).reshape([n as i64, dims as i64]),
        y: Tensor::from_slice(&y).to_kind(Kind::Int64),
        classes: classes as i64,
        image: None,
    }
}

/// Two or more interleaved spirals in the plane (`classes` arms, `n` points in all, with
/// Gaussian noise of `noise`): a set no linear model separates.
pub fn spirals(seed: u64, n: usize, classes: usize, noise: f64) -> Dataset {
    let mut rng = BeaconRng::new(Hash::tagged("pot/data/spirals", &[&seed.to_le_bytes()]));
    let mut x = Vec::with_capacity(2 * n);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        let t = unit(&mut rng);
        let r = t;
        let angle = t * 4.0 + c as f64 * std::f64::consts::TAU / classes as f64;
        x.push((r * angle.cos() + noise * normal(&mut rng)) as f32);
        x.push((r * angle.sin() + noise * normal(&mut rng)) as f32);
        y.push(c as i64);
    }
    Dataset {
        x: Tensor::from_slice(&x).reshape([n as i64, 2]),
        y: Tensor::from_slice(&y).to_kind(Kind::Int64),
        classes: classes as i64,
        image: None,
    }
}

/// The order in which epoch `epoch` visits `n` examples: a permutation drawn from the run seed,
/// so a replay from any step sees the same batches and a miner cannot pick its data.
pub fn epoch_order(run_seed: &Hash, epoch: u64, n: usize) -> Vec<i64> {
    let mut rng = BeaconRng::new(Hash::tagged(
        "pot/data-order",
        &[&run_seed.0, &epoch.to_le_bytes()],
    ));
    let mut order: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_deterministic_and_balanced() {
        let a = blobs(7, 90, 4, 3);
        let b = blobs(7, 90, 4, 3);
        assert_eq!(a.x.size(), vec![90, 4]);
        assert!(a.x.equal(&b.x) && a.y.equal(&b.y));
        assert!(!a.x.equal(&blobs(8, 90, 4, 3).x));
        let counts = a.y.bincount::<Tensor>(None, 3);
        assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![30, 30, 30]);
    }

    #[test]
    fn spirals_are_deterministic_in_the_unit_disc() {
        let a = spirals(1, 300, 3, 0.02);
        assert_eq!(a.x.size(), vec![300, 2]);
        assert!(a.x.equal(&spirals(1, 300, 3, 0.02).x));
        assert!(a.x.abs().max().double_value(&[]) < 1.2);
        assert_eq!(a.classes, 3);
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let s = Hash::digest(b"run");
        let o = epoch_order(&s, 0, 100);
        let mut sorted = o.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(o, epoch_order(&s, 0, 100));
        assert_ne!(o, epoch_order(&s, 1, 100));
        assert_ne!(o, epoch_order(&Hash::digest(b"other"), 0, 100));
    }
}
