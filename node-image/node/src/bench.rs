//! Measurements behind `make bench`: training throughput on the built-in digits, and the cost
//! PoT adds to plain training (checkpointing and hashing, and verification).

use std::time::Instant;

use pot_protocol::Hash;
use serde::Serialize;

use crate::train::data::Dataset;
use crate::train::datasets;
use crate::train::optim::{OptimizerConfig, OptimizerKind};
use crate::train::{RunSpec, Trainer, checkpoint};

fn spec(model: &str, batch: i64, steps: u64, k: u64) -> anyhow::Result<RunSpec> {
    Ok(RunSpec {
        loss: Default::default(),
        model: model.parse()?,
        optimizer: OptimizerConfig {
            kind: OptimizerKind::Sgd { momentum: 0.9 },
            lr: 0.01,
            weight_decay: 0.0,
        },
        batch_size: batch,
        steps,
        checkpoint_interval: k,
        run_seed: Hash::digest(b"bench"),
    })
}

fn data() -> Dataset {
    datasets::digits()
}

#[derive(Serialize)]
pub struct Throughput {
    pub model: String,
    pub batch: i64,
    pub threads: i32,
    pub steps_per_second: f64,
}

/// Training steps per second (SGD with momentum, cross-entropy) after `warmup` steps; the median
/// of `repeats` timings of `steps` steps.
pub fn throughput(
    model: &str,
    batch: i64,
    threads: i32,
    steps: u64,
    repeats: usize,
) -> anyhow::Result<Throughput> {
    tch::set_num_threads(threads);
    let d = data();
    let s = spec(model, batch, steps, steps)?;
    let mut t = Trainer::new(&s, &d)?;
    t.train_steps(&d, 20);
    let mut rates: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            t.train_steps(&d, steps);
            steps as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    Ok(Throughput {
        model: model.into(),
        batch,
        threads,
        steps_per_second: rates[rates.len() / 2],
    })
}

#[derive(Serialize)]
pub struct Overhead {
    pub model: String,
    pub steps: u64,
    pub checkpoint_interval: u64,
    pub plain_seconds: f64,
    pub pot_seconds: f64,
    /// (PoT run − plain training) / plain training.
    pub overhead: f64,
    /// Verifying `segments` segments plus the W_0 check, as a fraction of plain training.
    pub verify_fraction: f64,
    pub segments: u32,
}

/// Plain training against a PoT run (canonical checkpoint every `k` steps, hashed and written
/// to disk, Merkle root), and the cost of verifying `segments` segments.
pub fn overhead(model: &str, steps: u64, k: u64, segments: u32) -> anyhow::Result<Overhead> {
    tch::set_num_threads(1);
    let d = data();
    let s = spec(model, 64, steps, k)?;
    let best = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok(times[0])
    };
    let plain = best(&mut || {
        let mut t = Trainer::new(&s, &d)?;
        t.train_steps(&d, steps);
        Ok(())
    })?;
    let dir = tempfile::tempdir()?;
    let path = |i: usize| dir.path().join(format!("{i}.safetensors"));
    let pot = best(&mut || {
        Trainer::run(&s, &d, |i, bytes, _| Ok(std::fs::write(path(i), bytes)?))?;
        Ok(())
    })?;
    let n = (steps / k) as usize;
    let ckpts: Vec<Vec<u8>> = (0..=n)
        .map(|i| std::fs::read(path(i)))
        .collect::<Result<_, _>>()?;
    let verify = best(&mut || {
        let w0 = Trainer::new(&s, &d)?.checkpoint();
        anyhow::ensure!(checkpoint::hash(&w0) == checkpoint::hash(&ckpts[0]));
        for j in 0..segments as usize {
            let i = j * n / segments as usize;
            let mut t = Trainer::from_checkpoint(&s, &d, &ckpts[i])?;
            t.train_steps(&d, k);
            anyhow::ensure!(checkpoint::hash(&t.checkpoint()) == checkpoint::hash(&ckpts[i + 1]));
        }
        Ok(())
    })?;
    Ok(Overhead {
        model: model.into(),
        steps,
        checkpoint_interval: k,
        plain_seconds: plain,
        pot_seconds: pot,
        overhead: (pot - plain) / plain,
        verify_fraction: verify / plain,
        segments,
    })
}
