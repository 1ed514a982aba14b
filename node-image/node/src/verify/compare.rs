//! Comparing a replayed checkpoint with the committed one: bit for bit when the task demands
//! it, else every tensor — parameters, buffers and optimizer state — within its own relative
//! bound. A bound over the parameters alone would let a miner write any optimizer state (a
//! forged momentum steers the next segments anywhere) while every parameter replay passes.

use serde::Serialize;
use tch::Tensor;

use crate::train::checkpoint::{self, CheckpointError};

/// How far an honest replay may land from the committed checkpoint, per tensor, as
/// `‖replayed − committed‖ / ‖committed‖`. Zero for both means bit-identical checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    /// For the model's tensors (`model.*`: parameters and buffers).
    pub parameters: f64,
    /// For the optimizer's state (`optim.*`: momentum, Adam's moments).
    pub optimizer: f64,
}

impl Tolerance {
    pub const EXACT: Tolerance = Tolerance {
        parameters: 0.0,
        optimizer: 0.0,
    };

    pub fn is_exact(&self) -> bool {
        self.parameters == 0.0 && self.optimizer == 0.0
    }

    /// The bound for the tensor called `name`.
    pub fn bound(&self, name: &str) -> f64 {
        if name.starts_with("optim.") {
            self.optimizer
        } else {
            self.parameters
        }
    }
}

/// The tensor that is furthest from its committed value, relative to its bound.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Worst {
    pub tensor: String,
    pub distance: f64,
    pub bound: f64,
}

/// The outcome of one comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub ok: bool,
    /// `None` when the bytes are identical.
    pub worst: Option<Worst>,
    /// The largest distance among the model's tensors, and among the optimizer's (what a
    /// tolerance calibration reads).
    pub parameters: f64,
    pub optimizer: f64,
}

/// `‖a − b‖ / ‖b‖`; zero when equal, infinite when `b` is zero and `a` is not.
pub fn relative_distance(a: &Tensor, b: &Tensor) -> f64 {
    // In f64 throughout: squares of small f32 differences would underflow to zero.
    let (a, b) = (a.to_kind(tch::Kind::Double), b.to_kind(tch::Kind::Double));
    let diff = (&a - &b)
        .square()
        .sum(tch::Kind::Double)
        .double_value(&[])
        .sqrt();
    let norm = b.square().sum(tch::Kind::Double).double_value(&[]).sqrt();
    if diff == 0.0 {
        0.0
    } else if norm == 0.0 {
        f64::INFINITY
    } else {
        diff / norm
    }
}

/// Compare `replayed` with `committed` under `tolerance`. Identical bytes always pass; other
/// bytes pass only within a tolerance, when both hold the same tensors with the same shapes,
/// the same step, and every tensor is within its bound. An error means `committed` is not a
/// checkpoint at all.
pub fn compare(
    replayed: &[u8],
    committed: &[u8],
    tolerance: Tolerance,
) -> Result<Comparison, CheckpointError> {
    if replayed == committed {
        return Ok(Comparison {
            ok: true,
            worst: None,
            parameters: 0.0,
            optimizer: 0.0,
        });
    }
    let a = checkpoint::decode(replayed)?;
    let b = checkpoint::decode(committed)?;
    let mut worst: Option<Worst> = None;
    let (mut parameters, mut optimizer) = (0.0f64, 0.0f64);
    let mut ok = true;
    let mut consider = |w: Worst| {
        // A NaN distance (a NaN or an infinity in either tensor) is as far as can be.
        let distance = if w.distance.is_nan() {
            f64::INFINITY
        } else {
            w.distance
        };
        let w = Worst { distance, ..w };
        ok &= w.distance <= w.bound;
        if w.tensor.starts_with("optim.") {
            optimizer = optimizer.max(w.distance);
        } else if w.tensor.starts_with("model.") {
            parameters = parameters.max(w.distance);
        }
        let ratio = |w: &Worst| w.distance / w.bound.max(f64::MIN_POSITIVE);
        if worst.as_ref().is_none_or(|cur| ratio(&w) > ratio(cur)) {
            worst = Some(w);
        }
    };
    if a.metadata != b.metadata {
        consider(Worst {
            tensor: "metadata (step)".into(),
            distance: f64::INFINITY,
            bound: 0.0,
        });
    }
    for name in a.tensors.keys().chain(b.tensors.keys()) {
        let bound = tolerance.bound(name);
        let distance = match (a.tensors.get(name), b.tensors.get(name)) {
            (Some(x), Some(y)) if x.size() == y.size() => relative_distance(x, y),
            _ => f64::INFINITY,
        };
        consider(Worst {
            tensor: name.clone(),
            distance,
            bound,
        });
    }
    let ok = ok && !tolerance.is_exact();
    Ok(Comparison {
        ok,
        worst,
        parameters,
        optimizer,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ckpt(w: &[f32], m: &[f32], step: u64) -> Vec<u8> {
        let tensors: BTreeMap<String, Tensor> = [
            ("model.w".to_string(), Tensor::from_slice(w)),
            ("optim.momentum.w".to_string(), Tensor::from_slice(m)),
        ]
        .into();
        checkpoint::encode(&tensors, &[("step".to_string(), step.to_string())].into())
    }

    const LOOSE: Tolerance = Tolerance {
        parameters: 1e-3,
        optimizer: 1e-2,
    };

    #[test]
    fn identical_bytes_pass_even_exactly() {
        let a = ckpt(&[1.0, 2.0], &[0.1, 0.2], 10);
        let c = compare(&a, &a, Tolerance::EXACT).unwrap();
        assert!(c.ok);
        assert_eq!(c.worst, None);
    }

    #[test]
    fn exact_mode_refuses_one_ulp_and_names_the_tensor() {
        let a = ckpt(&[1.0, 2.0], &[0.1, 0.2], 10);
        let b = ckpt(&[1.0, f32::from_bits(2f32.to_bits() + 1)], &[0.1, 0.2], 10);
        let c = compare(&a, &b, Tolerance::EXACT).unwrap();
        assert!(!c.ok);
        assert_eq!(c.worst.unwrap().tensor, "model.w");
    }

    #[test]
    fn every_tensor_is_held_to_its_own_bound() {
        let committed = ckpt(&[1.0, 2.0], &[0.1, 0.2], 10);
        // Parameters within 1e-3, momentum within 1e-2: passes.
        let near = ckpt(&[1.0005, 2.0], &[0.1005, 0.2], 10);
        assert!(compare(&near, &committed, LOOSE).unwrap().ok);
        // The same parameters with a forged momentum: refused, and the momentum is named.
        let forged = ckpt(&[1.0, 2.0], &[5.0, -3.0], 10);
        let c = compare(&forged, &committed, LOOSE).unwrap();
        assert!(!c.ok);
        assert_eq!(c.worst.unwrap().tensor, "optim.momentum.w");
        // A parameter off by more than its bound, though the optimizer bound would allow it.
        let off = ckpt(&[1.005, 2.0], &[0.1, 0.2], 10);
        let c = compare(&off, &committed, LOOSE).unwrap();
        assert!(!c.ok);
        assert_eq!(c.worst.unwrap().tensor, "model.w");
    }

    #[test]
    fn another_step_or_other_tensors_never_pass() {
        let committed = ckpt(&[1.0, 2.0], &[0.1, 0.2], 10);
        let other_step = ckpt(&[1.0, 2.0], &[0.1, 0.2], 11);
        let c = compare(&other_step, &committed, LOOSE).unwrap();
        assert!(!c.ok);
        assert_eq!(c.worst.unwrap().tensor, "metadata (step)");
        let fewer: BTreeMap<String, Tensor> =
            [("model.w".to_string(), Tensor::from_slice(&[1f32, 2.0]))].into();
        let fewer = checkpoint::encode(&fewer, &[("step".to_string(), "10".to_string())].into());
        let c = compare(&fewer, &committed, LOOSE).unwrap();
        assert!(!c.ok);
        assert_eq!(c.worst.unwrap().tensor, "optim.momentum.w");
        // A zero tensor replayed as non-zero is infinitely far.
        let zero = ckpt(&[1.0, 2.0], &[0.0, 0.0], 10);
        let nonzero = ckpt(&[1.0, 2.0], &[1e-30, 0.0], 10);
        assert!(!compare(&nonzero, &zero, LOOSE).unwrap().ok);
    }

    #[test]
    fn a_nan_or_an_infinity_anywhere_fails_whatever_the_order_of_names() {
        let honest = ckpt(&[1.0, 2.0], &[0.1, 0.2], 10);
        // The first tensor by name (model.w) is close; the second holds a NaN, then an infinity.
        for bad in [f32::NAN, f32::INFINITY] {
            let committed = ckpt(&[1.0, 2.0], &[bad, 0.2], 10);
            let c = compare(&honest, &committed, LOOSE).unwrap();
            assert!(!c.ok, "{bad}");
            assert_eq!(c.worst.unwrap().distance, f64::INFINITY);
            assert_eq!(c.optimizer, f64::INFINITY);
        }
    }
}
