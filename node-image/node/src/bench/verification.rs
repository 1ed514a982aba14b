//! What verification costs and what it catches: a validator's full `verify` of an honest run
//! (every checkpoint read from disk and hashed, update norms, `s` sampled and `Q` largest
//! segments replayed) against the run's training time, and the share of one-segment splices
//! caught over many spliced runs, each at a random segment with a random sample.

use std::time::Instant;

use pot_protocol::merkle;
use pot_protocol::{Address, Hash};
use serde::Serialize;

use crate::run_dir::{Manifest, RunDir};
use crate::train::{RunSpec, Trainer, checkpoint};
use crate::verify::{self, ClaimFacts, MemorySource, Plan, RunDirSource, Tolerance};

#[derive(Serialize)]
pub struct Soundness {
    pub model: String,
    pub steps: u64,
    pub checkpoint_interval: u64,
    pub sampled: u32,
    pub top_q: u32,
    pub train_seconds: f64,
    /// The honest run's verification: wall time, and as a fraction of its training time.
    pub verify_seconds: f64,
    pub verify_fraction: f64,
    /// Bytes of all checkpoints, which a validator fetches, and the time they take at 1 Gbit/s
    /// as a fraction of the training time (a network transfer; the measurement above reads
    /// them from a local disk).
    pub checkpoint_bytes: u64,
    pub transfer_fraction_1gbps: f64,
    pub trials: u32,
    /// Spliced runs judged invalid with the top-Q check, and with the sample alone.
    pub caught: u32,
    pub caught_by_sample_alone: u32,
}

const TASK_SEED: u64 = 1;

fn claim(hashes: &[Hash], steps: u64) -> ClaimFacts {
    ClaimFacts {
        miner: Address::default(),
        salt: Hash::ZERO,
        checkpoint_root: merkle::root(hashes),
        model_hash: *hashes.last().expect("W_0 at least"),
        steps,
        hyper: Vec::new(),
    }
}

/// Measure `model` over `steps` steps with a checkpoint every `k`: the cost of verifying with
/// `s` sampled segments and the top `q`, and the catch rate over `trials` spliced runs.
pub fn verification(
    model: &str,
    steps: u64,
    k: u64,
    s: u32,
    q: u32,
    trials: u32,
) -> anyhow::Result<Soundness> {
    tch::set_num_threads(1);
    crate::train::determinism::exact_cpu_kernels(true);
    let d = super::data();
    let mut sp = super::spec(model, 64, steps, k, tch::Device::Cpu)?;
    sp.run_seed = pot_protocol::tx::run_seed(TASK_SEED, &Address::default(), &Hash::ZERO);
    let n = (steps / k) as usize;

    // The honest run, written as a miner would write it.
    let dir = tempfile::tempdir()?;
    let run = RunDir::new(dir.path());
    let mut honest = Vec::new();
    let started = Instant::now();
    let (record, _) = Trainer::run(&sp, &d, |i, bytes, _| {
        honest.push(bytes.to_vec());
        run.write_checkpoint(i, bytes)
    })?;
    let train_seconds = started.elapsed().as_secs_f64();
    run.write_manifest(&Manifest {
        model: model.into(),
        miner: Address::default(),
        salt: Hash::ZERO,
        hyper: Vec::new(),
        run_seed: sp.run_seed,
        steps,
        checkpoint_interval: k,
        model_hash: *record.checkpoints.last().expect("W_0 at least"),
        merkle_root: record.root,
        checkpoints: record.checkpoints.clone(),
        final_loss: record.final_loss,
        held_out_accuracy: 0.0,
        libtorch: crate::commands::LIBTORCH_VERSION.into(),
        cpu_capability: crate::commands::cpu_capability(),
        threads: 1,
        device: "cpu".into(),
        train_seconds,
        checkpoint_seconds: record.checkpoint_seconds,
    })?;
    let plan = |sampled: Vec<u32>, top_q: u32| Plan {
        sampled,
        top_q,
        tolerance: Tolerance::EXACT,
    };
    let mut rng = pot_protocol::sampling::BeaconRng::new(Hash::digest(b"bench/verification"));
    let sample = |rng: &mut pot_protocol::sampling::BeaconRng| -> Vec<u32> {
        rng.distinct(n as u64, u64::from(s))
            .into_iter()
            .map(|i| i as u32)
            .collect()
    };
    let source = RunDirSource::open(RunDir::new(dir.path()))?;
    let started = Instant::now();
    let report = verify::verify(
        &sp,
        TASK_SEED,
        &claim(&record.checkpoints, steps),
        &plan(sample(&mut rng), q),
        &source,
        &d,
        &d,
    )?;
    let verify_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.valid, "the honest run did not verify: {report:?}");
    let checkpoint_bytes: u64 = honest.iter().map(|c| c.len() as u64).sum();

    // The foreign model a splicer jumps to: another miner's finished run.
    let foreign = {
        let other = RunSpec {
            run_seed: Hash::digest(b"someone else"),
            checkpoint_interval: steps,
            ..sp.clone()
        };
        let (_, t) = Trainer::run(&other, &d, |_, _, _| Ok(()))?;
        t.checkpoint()
    };
    let (mut caught, mut caught_by_sample_alone) = (0, 0);
    for _ in 0..trials {
        let j = rng.below(n as u64) as usize;
        let mut ckpts = honest[..=j].to_vec();
        let at = (j as u64 + 1) * k;
        let foreign = checkpoint::decode(&foreign)?;
        ckpts.push(checkpoint::encode(
            &foreign.tensors,
            &[("step".to_string(), at.to_string())].into(),
        ));
        let mut t = Trainer::from_checkpoint(&sp, &d, ckpts.last().expect("pushed"), at)?;
        while t.step() < steps {
            t.train_steps(&d, k);
            ckpts.push(t.checkpoint());
        }
        let spliced = MemorySource::new(ckpts);
        let c = claim(spliced.hashes(), steps);
        let sampled = sample(&mut rng);
        let judge = |top_q| {
            verify::verify(
                &sp,
                TASK_SEED,
                &c,
                &plan(sampled.clone(), top_q),
                &spliced,
                &d,
                &d,
            )
        };
        caught += u32::from(!judge(q)?.valid);
        caught_by_sample_alone += u32::from(!judge(0)?.valid);
    }
    Ok(Soundness {
        model: model.into(),
        steps,
        checkpoint_interval: k,
        sampled: s,
        top_q: q,
        train_seconds,
        verify_seconds,
        verify_fraction: verify_seconds / train_seconds,
        checkpoint_bytes,
        transfer_fraction_1gbps: checkpoint_bytes as f64 / 125e6 / train_seconds,
        trials,
        caught,
        caught_by_sample_alone,
    })
}
