//! What `pot-node train`, `verify` and `eval` do, as functions the CLI and tests share.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pot_protocol::{Address, Hash};
use tch::Device;

use crate::run_dir::{Manifest, RunDir, RunIdentity};
use crate::train::Trainer;
use crate::train::fetch::Cache;
use crate::train::task::{self, TaskFile};
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

/// Who trains and with which choices: the miner's address and salt go into the run seed, the
/// hyper-parameters (`name=value`, within the task's ranges) override the task's defaults.
pub struct RunChoice {
    pub miner: Address,
    pub salt: Hash,
    pub hyper: Vec<String>,
}

/// Train the task in the file `task` as `who` chooses, writing the run into `out`.
pub fn train(
    task: &Path,
    out: &Path,
    who: &RunChoice,
    threads: Option<i32>,
    device: Device,
    cache: &Cache,
) -> anyhow::Result<Manifest> {
    let task_spec = TaskFile::read(task)?.spec;
    let hyper = task::choose_hyper(&task_spec, &who.hyper)?;
    let run = RunDir::new(out);
    let bar = ProgressBar::new(task_spec.steps).with_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len}  loss {msg}  {per_sec}  eta {eta}")
            .expect("valid template"),
    );
    let m = train_spec(
        &task_spec,
        hyper,
        &run,
        (who.miner, who.salt),
        threads,
        device,
        cache,
        &mut |event| match event {
            TrainEvent::Resumed { step } => {
                eprintln!("resuming {} at step {step}", out.display());
                bar.set_position(step);
            }
            TrainEvent::Checkpoint { step, loss } => {
                bar.set_position(step);
                bar.set_message(format!("{loss:.4}"));
            }
        },
    )?;
    bar.finish();
    Ok(m)
}

/// What a training run reports as it goes.
#[derive(Clone, Copy, Debug)]
pub enum TrainEvent {
    /// It picked up an earlier run's checkpoints: training goes on after `step`.
    Resumed { step: u64 },
    /// Checkpoint at `step` written; `loss` is the last batch's.
    Checkpoint { step: u64, loss: f32 },
}

/// Train `task_spec` with `hyper` as `(miner, salt)` into `run`, resuming from the run's last
/// checkpoint when it holds the same run, and write its manifest.
#[allow(clippy::too_many_arguments)]
pub fn train_spec(
    task_spec: &pot_protocol::task::TaskSpec,
    hyper: Vec<pot_protocol::task::HyperValue>,
    run: &RunDir,
    (miner, salt): (Address, Hash),
    threads: Option<i32>,
    device: Device,
    cache: &Cache,
    on_event: &mut dyn FnMut(TrainEvent),
) -> anyhow::Result<Manifest> {
    // A task that demands bit-identical replays trains and replays with kernels whose sums do
    // not depend on the thread count; held for the whole run (other work in this process
    // with other settings waits).
    let threads = task::threads(task_spec, threads)?;
    let _settings = crate::train::determinism::hold(task_spec.verification.is_exact(), threads);
    let spec = task::run_spec(task_spec, &hyper, &miner, &salt, device, cache)?;
    let (train, held_out) = task::load_data(task_spec, cache)?;
    let identity = RunIdentity {
        task: Hash::of_value("pot/task-spec", task_spec),
        miner,
        salt,
        hyper: hyper.clone(),
    };
    let n = (spec.steps / spec.checkpoint_interval) as usize;
    let mut progress = run.begin(&identity)?;
    if let Some(p) = &mut progress
        && p.hashes.len() > n
    {
        // Killed after its last checkpoint but before its manifest: train the last segment
        // again (the same bytes), which also gives the final loss.
        p.hashes.truncate(n);
        p.last = std::fs::read(run.checkpoint_path(n - 1))?;
    }
    let k = spec.checkpoint_interval;
    if let Some(p) = &progress {
        on_event(TrainEvent::Resumed {
            step: (p.hashes.len() as u64 - 1) * k,
        });
    }
    let started = Instant::now();
    let (record, trained) = Trainer::run_from(&spec, &train, progress, |i, bytes, loss| {
        run.write_checkpoint(i, bytes)?;
        if i > 0 {
            on_event(TrainEvent::Checkpoint {
                step: i as u64 * k,
                loss,
            });
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let accuracy = trained.accuracy(&held_out);
    let manifest = Manifest {
        model: task_spec.model.clone(),
        miner,
        salt,
        hyper,
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
        checkpoint_seconds: record.checkpoint_seconds,
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
    let task_spec = TaskFile::read(task)?.spec;
    let source = RunDirSource::open(RunDir::new(dir))?;
    verify_claim(
        &task_spec, claim, &source, sampled, None, threads, device, cache,
    )
}

/// Verify `claim` for `task_spec`, replaying the `sampled` segments and the task's top-Q with
/// checkpoints from `source`; the model's accuracy is measured on `eval_set` (default: the
/// task's held-out split).
#[allow(clippy::too_many_arguments)]
pub fn verify_claim(
    task_spec: &pot_protocol::task::TaskSpec,
    claim: &ClaimFacts,
    source: &dyn verify::CheckpointSource,
    sampled: &[u32],
    eval_set: Option<&pot_protocol::task::DatasetRef>,
    threads: Option<i32>,
    device: Device,
    cache: &Cache,
) -> anyhow::Result<Report> {
    // A task that demands bit-identical replays trains and replays with kernels whose sums do
    // not depend on the thread count; held for the whole verification.
    let _settings = crate::train::determinism::hold(
        task_spec.verification.is_exact(),
        task::threads(task_spec, threads)?,
    );
    let spec = task::run_spec(
        task_spec,
        &claim.hyper,
        &claim.miner,
        &claim.salt,
        device,
        cache,
    )
    .context("the claim's hyper-parameters")?;
    let (train, held_out) = task::load_data(task_spec, cache)?;
    let held_out = match eval_set {
        Some(d) => task::load_dataset(d, cache).context("the revealed eval set")?,
        None => held_out,
    };
    let plan = Plan {
        sampled: sampled.to_vec(),
        top_q: task_spec.verification.top_q,
        tolerance: task::tolerance(task_spec),
    };
    verify::verify(
        &spec,
        task_spec.seed,
        claim,
        &plan,
        source,
        &train,
        &held_out,
    )
}

/// Accuracy of the run's final model on the task's held-out data.
pub fn eval(task: &Path, dir: &Path, device: Device, cache: &Cache) -> anyhow::Result<f64> {
    let task_spec = TaskFile::read(task)?.spec;
    // A task that demands bit-identical replays trains and replays with kernels whose sums do
    // not depend on the thread count.
    crate::train::determinism::exact_cpu_kernels(task_spec.verification.is_exact());
    let run = RunDir::new(dir);
    let m = run.read_manifest()?;
    let spec = task::run_spec(&task_spec, &m.hyper, &m.miner, &m.salt, device, cache)?;
    let (train, held_out) = task::load_data(&task_spec, cache)?;
    let last = run.read_checkpoint(&m, m.checkpoints.len() - 1)?;
    let t = Trainer::from_checkpoint(&spec, &train, &last, spec.steps)
        .context("loading the final model")?;
    Ok(t.accuracy(&held_out))
}
