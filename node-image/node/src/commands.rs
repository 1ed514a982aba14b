//! What `pot-node train`, `verify` and `eval` do, as functions the CLI and tests share.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pot_protocol::{Address, Hash};
use tch::Device;

use crate::run_dir::{Manifest, RunDir};
use crate::train::Trainer;
use crate::train::fetch::Cache;
use crate::train::task_file::TaskFile;
use crate::verify::{self, ClaimFacts, Plan, Report, RunDirSource};

/// The libtorch this binary is built against.
pub const LIBTORCH_VERSION: &str = "2.11.0";

/// The CPU kernel level libtorch runs at: `ATEN_CPU_CAPABILITY`, read once when it loads.
pub fn cpu_capability() -> String {
    std::env::var("ATEN_CPU_CAPABILITY").unwrap_or_else(|_| "native".into())
}

/// `--device`: `cpu` (the default: bit-identical replays), `cuda` or `cuda:N` (an NVIDIA GPU;
/// needs a build with the `cuda` feature), or `auto` (the first GPU if there is one).
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    let device = match s {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(),
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::Cuda(n),
            _ => bail!("unknown device {other:?}: expected cpu, cuda, cuda:N or auto"),
        },
    };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count();
        if (n as i64) >= count {
            bail!(
                "device {s:?} asked for GPU {n}, but libtorch sees {count} CUDA device(s){}",
                if cfg!(feature = "cuda") {
                    ""
                } else {
                    " (this pot-node was built without the `cuda` feature)"
                }
            );
        }
    }
    Ok(device)
}

/// How a device is written in a manifest.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Train the task in `task` as `miner` with `salt`, writing the run into `out`.
pub fn train(
    task: &Path,
    out: &Path,
    miner: Address,
    salt: Hash,
    threads: Option<i32>,
    device: Device,
    cache: &Cache,
) -> anyhow::Result<Manifest> {
    let tf = TaskFile::read(task)?;
    // A task that demands bit-identical replays trains and replays with kernels whose sums do
    // not depend on the thread count.
    crate::train::determinism::exact_cpu_kernels(tf.tolerance().is_exact());
    if RunDir::exists(out) {
        bail!(
            "{} already holds a run; choose another --out",
            out.display()
        );
    }
    let threads = tf.threads(threads)?;
    tch::set_num_threads(threads);
    let spec = tf.run_spec(&miner, &salt, device, cache)?;
    let (train, held_out) = tf.load_data(cache)?;
    let run = RunDir::new(out);
    let bar = ProgressBar::new(spec.steps).with_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len}  loss {msg}  {per_sec}  eta {eta}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let k = spec.checkpoint_interval;
    let (record, trained) = Trainer::run(&spec, &train, |i, bytes, loss| {
        run.write_checkpoint(i, bytes)?;
        if i > 0 {
            bar.inc(k);
            bar.set_message(format!("{loss:.4}"));
        }
        Ok(())
    })?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let accuracy = trained.accuracy(&held_out);
    let manifest = Manifest {
        model: tf.model.clone(),
        miner,
        salt,
        run_seed: spec.run_seed,
        steps: spec.steps,
        checkpoint_interval: spec.checkpoint_interval,
        model_hash: *record.checkpoints.last().expect("at least W_0"),
        merkle_root: record.root,
        checkpoints: record.checkpoints,
        final_loss: record.final_loss,
        held_out_accuracy: accuracy,
        libtorch: LIBTORCH_VERSION.into(),
        cpu_capability: cpu_capability(),
        threads,
        device: device_name(device),
        train_seconds: seconds,
    };
    run.write_manifest(&manifest)?;
    Ok(manifest)
}

/// Verify `claim` (as the chain records it) for `task`, replaying the `sampled` segments and
/// the task's top-Q, with checkpoints read from the run directory `dir`.
pub fn verify(
    task: &Path,
    claim: &ClaimFacts,
    dir: &Path,
    sampled: &[u32],
    threads: Option<i32>,
    device: Device,
    cache: &Cache,
) -> anyhow::Result<Report> {
    let tf = TaskFile::read(task)?;
    tch::set_num_threads(tf.threads(threads)?);
    // A task that demands bit-identical replays trains and replays with kernels whose sums do
    // not depend on the thread count.
    crate::train::determinism::exact_cpu_kernels(tf.tolerance().is_exact());
    let source = RunDirSource::open(RunDir::new(dir))?;
    let spec = tf.run_spec(&claim.miner, &claim.salt, device, cache)?;
    let (train, held_out) = tf.load_data(cache)?;
    let plan = Plan {
        sampled: sampled.to_vec(),
        top_q: tf.top_q,
        tolerance: tf.tolerance(),
    };
    verify::verify(&spec, tf.seed, claim, &plan, &source, &train, &held_out)
}

/// Accuracy of the run's final model on the task's held-out data.
pub fn eval(task: &Path, dir: &Path, device: Device, cache: &Cache) -> anyhow::Result<f64> {
    let tf = TaskFile::read(task)?;
    // A task that demands bit-identical replays trains and replays with kernels whose sums do
    // not depend on the thread count.
    crate::train::determinism::exact_cpu_kernels(tf.tolerance().is_exact());
    let run = RunDir::new(dir);
    let m = run.read_manifest()?;
    let spec = tf.run_spec(&m.miner, &m.salt, device, cache)?;
    let (train, held_out) = tf.load_data(cache)?;
    let last = run.read_checkpoint(&m, m.checkpoints.len() - 1)?;
    let t = Trainer::from_checkpoint(&spec, &train, &last, spec.steps)
        .context("loading the final model")?;
    Ok(t.accuracy(&held_out))
}
