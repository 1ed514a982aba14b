//! Verification of a training run, as a validator does it: the first checkpoint is the
//! initialisation bound to the miner's run seed, the last is the claimed model, sampled segments
//! replay from `W_i` to `W_{i+1}`, and the model is evaluated on the eval set.

use serde::Serialize;

use crate::run_dir::{Manifest, RunDir};
use crate::train::checkpoint;
use crate::train::data::Dataset;
use crate::train::{RunSpec, Trainer};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegmentCheck {
    pub index: u32,
    pub ok: bool,
    /// Normalised L2 distance between the replayed and the committed parameters (0 when the
    /// hashes are equal).
    pub distance: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub init_ok: bool,
    pub final_ok: bool,
    pub segments: Vec<SegmentCheck>,
    pub accuracy: f64,
    pub valid: bool,
}

/// Verify `segments` of the run in `dir` (whose manifest must match `spec`).
pub fn verify(
    spec: &RunSpec,
    run: &RunDir,
    segments: &[u32],
    tolerance: f64,
    train: &Dataset,
    eval: &Dataset,
) -> anyhow::Result<Report> {
    let m = run.read_manifest()?;
    check_manifest(spec, &m)?;
    let n = m.checkpoints.len() - 1;

    let own_w0 = Trainer::new(spec, train)?.checkpoint();
    let init_ok = checkpoint::hash(&own_w0) == m.checkpoints[0];
    let final_ok = m.checkpoints[n] == m.model_hash;

    let mut checks = Vec::new();
    for &i in segments {
        let i_us = i as usize;
        if i_us >= n {
            anyhow::bail!("segment {i} does not exist: the run has {n} segments");
        }
        let from = run.read_checkpoint(&m, i_us)?;
        let to = run.read_checkpoint(&m, i_us + 1)?;
        let mut t = Trainer::from_checkpoint(spec, train, &from)?;
        t.train_steps(train, spec.checkpoint_interval);
        let replayed = t.checkpoint();
        let (ok, distance) = if checkpoint::hash(&replayed) == m.checkpoints[i_us + 1] {
            (true, 0.0)
        } else {
            let d = distance(&replayed, &to)?;
            (tolerance > 0.0 && d <= tolerance, d)
        };
        checks.push(SegmentCheck {
            index: i,
            ok,
            distance,
        });
    }

    let last = run.read_checkpoint(&m, n)?;
    let accuracy = Trainer::from_checkpoint(spec, train, &last)?.accuracy(eval);
    let valid = init_ok && final_ok && checks.iter().all(|c| c.ok);
    Ok(Report {
        init_ok,
        final_ok,
        segments: checks,
        accuracy,
        valid,
    })
}

fn check_manifest(spec: &RunSpec, m: &Manifest) -> anyhow::Result<()> {
    if m.run_seed != spec.run_seed {
        anyhow::bail!(
            "the run's seed {} is not this task's seed for its miner and salt {}",
            m.run_seed,
            spec.run_seed
        );
    }
    let expected = (spec.steps / spec.checkpoint_interval) as usize + 1;
    if m.checkpoints.len() != expected || m.steps != spec.steps {
        anyhow::bail!(
            "the run has {} checkpoints over {} steps; the task asks for {expected} over {}",
            m.checkpoints.len(),
            m.steps,
            spec.steps
        );
    }
    Ok(())
}

/// `‖a − b‖ / ‖b‖` over the model parameters of two checkpoints.
pub fn distance(a: &[u8], b: &[u8]) -> anyhow::Result<f64> {
    let a = checkpoint::decode(a)?;
    let b = checkpoint::decode(b)?;
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (name, tb) in b.tensors.iter().filter(|(n, _)| n.starts_with("model.")) {
        let ta = a
            .tensors
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("replay lacks {name}"))?;
        diff += (ta - tb).square().sum(tch::Kind::Double).double_value(&[]);
        norm += tb.square().sum(tch::Kind::Double).double_value(&[]);
    }
    Ok(diff.sqrt() / norm.sqrt().max(f64::MIN_POSITIVE))
}
