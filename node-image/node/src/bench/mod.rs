//! Measurements behind `make bench`: training throughput on the built-in digits, and the cost
//! PoT adds to plain training (checkpointing and hashing, and verification); what verification
//! costs and catches is in [`verification`]; the ledger's cost per block against the size of its
//! state is in [`block_cost`].

pub mod block_cost;
pub mod verification;

use std::time::Instant;

use pot_protocol::Hash;
use serde::Serialize;

use crate::train::data::Dataset;
use crate::train::datasets;
use crate::train::optim::{OptimizerConfig, OptimizerKind};
use crate::train::{RunSpec, Trainer, checkpoint};

fn spec(
    model: &str,
    batch: i64,
    steps: u64,
    k: u64,
    device: tch::Device,
) -> anyhow::Result<RunSpec> {
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
        device,
    })
}

fn data() -> Dataset {
    datasets::digits()
}

/// CIFAR-10-shaped data: 2,048 random 3×32×32 images in 10 classes, for throughput, where the
/// pixels do not matter but the shapes do (convolutions on 32×32 images, not 8×8 digits).
fn cifar_shaped() -> Dataset {
    tch::manual_seed(7);
    Dataset {
        x: tch::Tensor::randn([2048, 3 * 32 * 32], (tch::Kind::Float, tch::Device::Cpu)),
        y: tch::Tensor::randint(10, [2048], (tch::Kind::Int64, tch::Device::Cpu)),
        classes: 10,
        image: Some([3, 32, 32]),
    }
}

/// The data a throughput measurement trains on: `digits` or `cifar-shaped`.
fn named_data(name: &str) -> anyhow::Result<Dataset> {
    match name {
        "digits" => Ok(data()),
        "cifar-shaped" => Ok(cifar_shaped()),
        other => anyhow::bail!("unknown benchmark data {other:?}: expected digits or cifar-shaped"),
    }
}

#[derive(Serialize)]
pub struct Throughput {
    pub model: String,
    pub data: String,
    pub batch: i64,
    pub threads: i32,
    pub device: String,
    pub steps_per_second: f64,
}

/// Training steps per second (SGD with momentum, cross-entropy) after `warmup` steps; the median
/// of `repeats` timings of `steps` steps.
pub fn throughput(
    model: &str,
    data_name: &str,
    batch: i64,
    threads: i32,
    steps: u64,
    repeats: usize,
    device: tch::Device,
) -> anyhow::Result<Throughput> {
    tch::set_num_threads(threads);
    let d = named_data(data_name)?;
    let s = spec(model, batch, steps, steps, device)?;
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
        data: data_name.into(),
        batch,
        threads,
        device: crate::commands::device_name(device),
        steps_per_second: rates[rates.len() / 2],
    })
}

#[derive(Serialize)]
pub struct Overhead {
    pub model: String,
    pub steps: u64,
    pub checkpoint_interval: u64,
    /// Time spent training, and time spent making, hashing and writing checkpoints, in the same
    /// run (timed separately, so machine noise does not swamp a few per cent).
    pub train_seconds: f64,
    pub checkpoint_seconds: f64,
    /// checkpoint time / training time.
    pub overhead: f64,
    /// Checking `W_0` and replaying `segments` segments, as a fraction of the training time.
    pub verify_fraction: f64,
    pub segments: u32,
}

/// One PoT run with its checkpoint work timed apart from its training, then the cost of
/// verifying `segments` evenly spread segments.
pub fn overhead(model: &str, steps: u64, k: u64, segments: u32) -> anyhow::Result<Overhead> {
    tch::set_num_threads(1);
    let d = data();
    let s = spec(model, 64, steps, k, tch::Device::Cpu)?;
    let dir = tempfile::tempdir()?;
    let path = |i: usize| dir.path().join(format!("{i}.safetensors"));
    // Warm libtorch up on a throw-away trainer, then time a fresh run from W_0.
    Trainer::new(&s, &d)?.train_steps(&d, 20);
    let mut t = Trainer::new(&s, &d)?;
    let (mut train, mut ckpt) = (0.0, 0.0);
    let mut hashes = Vec::new();
    let mut save = |t: &Trainer, i: usize, ckpt: &mut f64| -> anyhow::Result<()> {
        let start = Instant::now();
        let bytes = t.checkpoint();
        hashes.push(checkpoint::hash(&bytes));
        std::fs::write(path(i), &bytes)?;
        *ckpt += start.elapsed().as_secs_f64();
        Ok(())
    };
    save(&t, 0, &mut ckpt)?;
    let n = (steps / k) as usize;
    for i in 1..=n {
        let start = Instant::now();
        t.train_steps(&d, k);
        train += start.elapsed().as_secs_f64();
        save(&t, i, &mut ckpt)?;
    }
    let start = Instant::now();
    let _root = pot_protocol::merkle::root(&hashes);
    ckpt += start.elapsed().as_secs_f64();

    let start = Instant::now();
    let w0 = Trainer::new(&s, &d)?.checkpoint();
    anyhow::ensure!(checkpoint::hash(&w0) == hashes[0], "W_0 does not reproduce");
    for j in 0..segments as usize {
        let i = j * n / segments as usize;
        let mut r = Trainer::from_checkpoint(&s, &d, &std::fs::read(path(i))?, i as u64 * k)?;
        r.train_steps(&d, k);
        anyhow::ensure!(
            checkpoint::hash(&r.checkpoint()) == hashes[i + 1],
            "segment {i} does not replay"
        );
    }
    let verify = start.elapsed().as_secs_f64();
    Ok(Overhead {
        model: model.into(),
        steps,
        checkpoint_interval: k,
        train_seconds: train,
        checkpoint_seconds: ckpt,
        overhead: ckpt / train,
        verify_fraction: verify / train,
        segments,
    })
}
