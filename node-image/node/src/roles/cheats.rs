//! Cheating miners, for tests of what validators and the ledger do about them through the real
//! processes. Compiled only with the `fault-injection` cargo feature, which the test harness
//! enables and no shipped binary has. Each cheat writes a run directory (checkpoints and a
//! manifest) that the miner then publishes and claims as if it were honest.

use pot_protocol::task::{HyperValue, TaskSpec};
use pot_protocol::{Address, Hash, merkle};

use crate::run_dir::{Manifest, RunDir};
use crate::train::checkpoint;
use crate::train::fetch::Cache;
use crate::train::task;
use crate::train::{RunSpec, Trainer};

/// A miner's way of cheating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Cheat {
    /// Trains half of each segment's steps and labels the checkpoints as if it had trained
    /// them all.
    Lazy,
    /// Claims another run's trajectory (trained from another seed) with its own salt.
    Copycat,
    /// Trains honestly to the middle, jumps once to a foreign model, and trains on honestly
    /// from there: one huge update, which only the largest-update check is sure to replay.
    Splicer,
    /// Trains honestly and reveals, then deletes its checkpoints so nobody can fetch them.
    Withhold,
    /// As a validator: report every claim valid without fetching or replaying anything (a
    /// committee seat is still served honestly).
    RubberStamp,
}

/// Checkpoint bytes with the step they claim to be at.
fn restamp(bytes: &[u8], step: u64) -> anyhow::Result<Vec<u8>> {
    let c = checkpoint::decode(bytes)?;
    Ok(checkpoint::encode(
        &c.tensors,
        &[("step".to_string(), step.to_string())].into(),
    ))
}

/// Make the cheat's trajectory for `(miner, salt)` into `run`; `None` for a cheat that trains
/// honestly (the caller trains as usual).
pub fn trajectory(
    cheat: Cheat,
    spec: &TaskSpec,
    hyper: &[HyperValue],
    run: &RunDir,
    (miner, salt): (Address, Hash),
    cache: &Cache,
) -> anyhow::Result<Option<Manifest>> {
    if matches!(cheat, Cheat::Withhold | Cheat::RubberStamp) {
        return Ok(None);
    }
    let _settings =
        crate::train::determinism::hold(spec.verification.is_exact(), task::threads(spec, None)?);
    let device = tch::Device::Cpu;
    let own = task::run_spec(spec, hyper, &miner, &salt, device, cache)?;
    let (data, _) = task::load_data(spec, cache)?;
    let k = own.checkpoint_interval;
    let n = (own.steps / k) as usize;
    let other_salt = Hash::digest(b"someone else's run");
    let other = task::run_spec(spec, hyper, &miner, &other_salt, device, cache)?;
    let checkpoints: Vec<Vec<u8>> = match cheat {
        Cheat::Lazy => {
            let mut t = Trainer::new(&own, &data)?;
            let mut out = vec![t.checkpoint()];
            for i in 1..=n {
                t.train_steps(&data, (k / 2).max(1));
                out.push(restamp(&t.checkpoint(), i as u64 * k)?);
            }
            out
        }
        Cheat::Copycat => whole_run(&other, &data)?,
        Cheat::Splicer => {
            let j = n / 2;
            let mut out = whole_run(
                &RunSpec {
                    steps: j as u64 * k,
                    ..own.clone()
                },
                &data,
            )?;
            let foreign = whole_run(&other, &data)?.pop().expect("a final model");
            let at = (j as u64 + 1) * k;
            out.push(restamp(&foreign, at)?);
            let mut t = Trainer::from_checkpoint(&own, &data, out.last().expect("pushed"), at)?;
            while t.step() < own.steps {
                t.train_steps(&data, k);
                out.push(t.checkpoint());
            }
            out
        }
        Cheat::Withhold | Cheat::RubberStamp => unreachable!("handled above"),
    };
    anyhow::ensure!(
        checkpoints.len() == n + 1,
        "a cheat made {} checkpoints",
        checkpoints.len()
    );
    for (i, c) in checkpoints.iter().enumerate() {
        run.write_checkpoint(i, c)?;
    }
    let hashes: Vec<Hash> = checkpoints.iter().map(|c| checkpoint::hash(c)).collect();
    let m = Manifest {
        model: spec.model.clone(),
        miner,
        salt,
        hyper: hyper.to_vec(),
        run_seed: own.run_seed,
        steps: own.steps,
        checkpoint_interval: k,
        merkle_root: merkle::root(&hashes),
        model_hash: *hashes.last().expect("at least W_0"),
        checkpoints: hashes,
        final_loss: 0.0,
        held_out_accuracy: 0.0,
        libtorch: crate::commands::LIBTORCH_VERSION.into(),
        cpu_capability: crate::commands::cpu_capability(),
        threads: 1,
        device: "cpu".into(),
        train_seconds: 0.0,
        checkpoint_seconds: 0.0,
    };
    run.write_manifest(&m)?;
    Ok(Some(m))
}

/// Every checkpoint of an honest run of `spec`.
fn whole_run(spec: &RunSpec, data: &crate::train::data::Dataset) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    Trainer::run(spec, data, |_, bytes, _| {
        out.push(bytes.to_vec());
        Ok(())
    })?;
    Ok(out)
}

/// The rubber stamp's report on a claim: valid, every assigned segment "replayed", a
/// plausible metric.
pub fn rubber_stamp(segments: &[u32]) -> pot_protocol::tx::Report {
    use pot_protocol::tx::{Report, SegmentResult, Verdict};
    Report {
        verdict: Verdict::Valid,
        metric: pot_protocol::units::Fixed::from_f64(0.99),
        init_ok: true,
        final_ok: true,
        segments: segments
            .iter()
            .map(|&index| SegmentResult { index, ok: true })
            .collect(),
    }
}

/// Crashes a test makes a node suffer, each once per data directory (the restarted process
/// carries on), as a kill would: no cleanup, no flush.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Crashes {
    /// Abort when the first training reaches this step (once).
    #[arg(long)]
    pub crash_at_step: Option<u64>,
    /// Abort half-way through fetching the first claim's checkpoints (once).
    #[arg(long)]
    pub crash_mid_download: bool,
}

/// Abort the process, unless it already did so for `what` with this data directory.
pub fn crash_once(data_dir: &std::path::Path, what: &str) {
    let marker = data_dir.join(format!("crashed-{what}"));
    if marker.exists() {
        return;
    }
    if std::fs::write(&marker, b"").is_ok() {
        tracing::warn!(what, "crashing deliberately");
        std::process::abort();
    }
}

/// A checkpoint source that aborts the process half-way through the run's checkpoints.
pub struct CrashMidDownload<'a> {
    pub inner: &'a dyn crate::verify::CheckpointSource,
    pub at: usize,
    pub data_dir: std::path::PathBuf,
}

impl crate::verify::CheckpointSource for CrashMidDownload<'_> {
    fn fetch(&self, i: usize, max_bytes: u64) -> anyhow::Result<(Vec<u8>, merkle::Proof)> {
        if i == self.at {
            crash_once(&self.data_dir, "mid-download");
        }
        self.inner.fetch(i, max_bytes)
    }
}
