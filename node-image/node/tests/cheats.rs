//! Cheating miners against `verify`, as a validator runs it: each cheat is a real trajectory
//! made here (trained, interpolated, copied, spliced or steered), committed under its own
//! Merkle root as a miner would commit it on chain, and each is judged invalid for its reason.
//! Honest runs pass. Every finding `verify` can make is reached by some test here.

use std::collections::BTreeMap;

use pot_node::train::checkpoint;
use pot_node::train::data::{Dataset, blobs};
use pot_node::train::optim::{OptimizerConfig, OptimizerKind};
use pot_node::train::{RunSpec, Trainer};
use pot_node::verify::{
    self, CheckpointSource, ClaimFacts, Finding, MemorySource, Plan, Report, Selected, Tolerance,
};
use pot_protocol::merkle::{self, Proof};
use pot_protocol::{Address, Hash, SecretKey};
use tch::Tensor;

const TASK_SEED: u64 = 41;
const SGD: OptimizerKind = OptimizerKind::Sgd { momentum: 0.9 };

fn miner(n: u8) -> Address {
    SecretKey::from_seed([n; 32]).address()
}

fn salt(n: u8) -> Hash {
    Hash::digest(&[n])
}

fn data() -> Dataset {
    tch::set_num_threads(1);
    blobs(3, 600, 8, 4)
}

/// The run spec of `who` with salt `s`: `steps` steps, a checkpoint every `k`.
fn spec(who: &Address, s: &Hash, steps: u64, k: u64) -> RunSpec {
    RunSpec {
        loss: Default::default(),
        model: "mlp:16".parse().unwrap(),
        optimizer: OptimizerConfig {
            kind: SGD,
            lr: 0.05,
            weight_decay: 1e-4,
        },
        batch_size: 32,
        steps,
        checkpoint_interval: k,
        run_seed: pot_protocol::tx::run_seed(TASK_SEED, who, s),
        device: tch::Device::Cpu,
    }
}

/// Checkpoints a miner commits to, served with proofs built from its own list.
struct Trajectory(Vec<Vec<u8>>);

impl Trajectory {
    /// What the chain records when `who` claims this trajectory with salt `s`.
    fn claim(&self, who: &Address, s: &Hash) -> ClaimFacts {
        let source = MemorySource::new(self.0.clone());
        let hashes = source.hashes();
        ClaimFacts {
            miner: *who,
            salt: *s,
            checkpoint_root: merkle::root(hashes),
            model_hash: *hashes.last().unwrap(),
            steps: step_of(self.0.last().unwrap()),
            hyper: Vec::new(),
        }
    }
}

impl CheckpointSource for Trajectory {
    fn fetch(&self, i: usize, max_bytes: u64) -> anyhow::Result<(Vec<u8>, Proof)> {
        MemorySource::new(self.0.clone()).fetch(i, max_bytes)
    }
}

fn step_of(bytes: &[u8]) -> u64 {
    checkpoint::decode(bytes).unwrap().metadata["step"]
        .parse()
        .unwrap()
}

/// An honest run of `spec`.
fn honest(spec: &RunSpec, d: &Dataset) -> Trajectory {
    let mut out = Vec::new();
    Trainer::run(spec, d, |_, b, _| {
        out.push(b.to_vec());
        Ok(())
    })
    .unwrap();
    Trajectory(out)
}

/// Continue `t` honestly from its last checkpoint to `spec.steps`.
fn continue_honestly(t: &mut Trajectory, spec: &RunSpec, d: &Dataset) {
    let k = spec.checkpoint_interval;
    let at = step_of(t.0.last().unwrap());
    let mut trainer = Trainer::from_checkpoint(spec, d, t.0.last().unwrap(), at).unwrap();
    while trainer.step() < spec.steps {
        trainer.train_steps(d, k);
        t.0.push(trainer.checkpoint());
    }
}

/// A checkpoint's tensors and step.
fn tensors(bytes: &[u8]) -> BTreeMap<String, Tensor> {
    checkpoint::decode(bytes).unwrap().tensors
}

fn encode(tensors: &BTreeMap<String, Tensor>, step: u64) -> Vec<u8> {
    checkpoint::encode(tensors, &[("step".to_string(), step.to_string())].into())
}

fn judge(
    spec: &RunSpec,
    claim: &ClaimFacts,
    source: &dyn CheckpointSource,
    sampled: &[u32],
    top_q: u32,
    tolerance: Tolerance,
    d: &Dataset,
) -> Report {
    let plan = Plan {
        sampled: sampled.to_vec(),
        top_q,
        tolerance,
    };
    verify::verify(spec, TASK_SEED, claim, &plan, source, d, d).unwrap()
}

fn has(report: &Report, pred: impl Fn(&Finding) -> bool) -> bool {
    report.findings.iter().any(pred)
}

const LOOSE: Tolerance = Tolerance {
    parameters: 1e-3,
    optimizer: 1e-2,
};

#[test]
fn honest_runs_pass_exactly_and_within_a_tolerance() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 100, 10);
    let t = honest(&sp, &d);
    for tolerance in [Tolerance::EXACT, LOOSE] {
        let r = judge(&sp, &t.claim(&a, &s), &t, &[1, 6], 3, tolerance, &d);
        assert!(r.valid, "{r:#?}");
        for i in [1, 6] {
            assert!(r.segments.iter().any(|c| c.index == i), "sampled {i}");
        }
        let largest = r
            .segments
            .iter()
            .filter(|c| c.selected != Selected::Sampled);
        assert_eq!(largest.count(), 3, "and the three largest updates");
        assert_eq!(r.update_norms.len(), 10);
        assert!(r.accuracy.unwrap() > 0.9, "{r:#?}");
    }
}

#[test]
fn a_verification_with_no_segments_is_refused() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 40, 10);
    let t = honest(&sp, &d);
    let plan = Plan {
        sampled: vec![],
        top_q: 3,
        tolerance: Tolerance::EXACT,
    };
    let e = verify::verify(&sp, TASK_SEED, &t.claim(&a, &s), &plan, &t, &d, &d).unwrap_err();
    assert!(e.to_string().contains("no segments to replay"), "{e}");
    let plan = Plan {
        sampled: vec![4],
        ..plan
    };
    let e = verify::verify(&sp, TASK_SEED, &t.claim(&a, &s), &plan, &t, &d, &d).unwrap_err();
    assert!(e.to_string().contains("segment 4 does not exist"), "{e}");
}

#[test]
fn a_lazy_miner_that_interpolates_its_checkpoints_is_caught() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 100, 10);
    // A quarter of the training, then checkpoints on the straight line from W_0 to its end.
    let mut t = Trainer::new(&sp, &d).unwrap();
    let w0 = tensors(&t.checkpoint());
    t.train_steps(&d, 25);
    let end = tensors(&t.checkpoint());
    let lazy = Trajectory(
        (0..=10)
            .map(|i| {
                let f = i as f64 / 10.0;
                let mixed = w0
                    .iter()
                    .map(|(n, x)| (n.clone(), x * (1.0 - f) + &end[n] * f))
                    .collect();
                encode(&mixed, i * 10)
            })
            .collect(),
    );
    for tolerance in [Tolerance::EXACT, LOOSE] {
        let r = judge(&sp, &lazy.claim(&a, &s), &lazy, &[2, 7], 0, tolerance, &d);
        assert!(!r.valid);
        assert!(
            r.init_ok && r.final_ok,
            "its ends are honest; the middle is not"
        );
        for i in [2, 7] {
            assert!(
                has(
                    &r,
                    |f| matches!(f, Finding::SegmentMismatch { segment, .. } if *segment == i)
                ),
                "{r:#?}"
            );
        }
    }
}

#[test]
fn a_copycat_claiming_another_miners_trajectory_fails_at_w0() {
    let d = data();
    let (a, sa) = (miner(1), salt(1));
    let (b, sb) = (miner(2), salt(2));
    let stolen = honest(&spec(&a, &sa, 60, 10), &d);
    // The copycat commits the same checkpoints, root and model under its own address and salt.
    let claim = stolen.claim(&b, &sb);
    let r = judge(
        &spec(&b, &sb, 60, 10),
        &claim,
        &stolen,
        &[3],
        0,
        Tolerance::EXACT,
        &d,
    );
    assert!(!r.valid);
    assert!(!r.init_ok);
    assert!(has(&r, |f| matches!(f, Finding::InitMismatch)), "{r:#?}");
    // Its batches follow its own seed, so the replay fails too.
    assert!(has(&r, |f| matches!(f, Finding::SegmentMismatch { .. })));
}

/// A run of 100 segments that follows the honest trajectory to checkpoint `j`, jumps at segment
/// `j` to `foreign`'s model and optimizer state, then trains on honestly from there.
fn spliced(sp: &RunSpec, d: &Dataset, j: usize, foreign: &[u8]) -> Trajectory {
    let mut t = honest(
        &RunSpec {
            steps: j as u64 * sp.checkpoint_interval,
            ..sp.clone()
        },
        d,
    );
    if j == 0 {
        t = Trajectory(vec![Trainer::new(sp, d).unwrap().checkpoint()]);
    }
    t.0.push(encode(
        &tensors(foreign),
        (j as u64 + 1) * sp.checkpoint_interval,
    ));
    continue_honestly(&mut t, sp, d);
    assert_eq!(t.0.len(), 101);
    t
}

/// `s` sampled segments of `n` that miss `j` and the segments next to it (the worst case for
/// a sample).
fn sample_missing(j: usize, n: usize, s: usize) -> Vec<u32> {
    (0..n as u32)
        .filter(|&i| (i as usize).abs_diff(j) > 1)
        .step_by(n / s)
        .take(s)
        .collect()
}

#[test]
fn a_splice_to_a_foreign_model_is_caught_by_the_top_q_check_every_time() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 200, 2);
    // Stolen: another miner's finished model. Stronger: trained from this miner's own W_0 for
    // three times the steps on three times the data the task gives.
    let stolen = honest(&spec(&miner(9), &salt(9), 200, 200), &d)
        .0
        .pop()
        .unwrap();
    let more = blobs(3, 1800, 8, 4);
    let stronger = {
        let long = RunSpec {
            steps: 600,
            checkpoint_interval: 600,
            ..sp.clone()
        };
        honest(&long, &more).0.pop().unwrap()
    };
    for (what, foreign) in [("stolen", &stolen), ("stronger", &stronger)] {
        for j in [0usize, 37, 98] {
            let t = spliced(&sp, &d, j, foreign);
            let claim = t.claim(&a, &s);
            let sampled = sample_missing(j, 100, 5);
            // The sample alone misses the splice: every replayed segment is honest.
            let lucky = judge(&sp, &claim, &t, &sampled, 0, Tolerance::EXACT, &d);
            assert!(lucky.valid, "{what} at {j}: {lucky:#?}");
            // The top-Q check replays the jump and catches it.
            let r = judge(&sp, &claim, &t, &sampled, 3, Tolerance::EXACT, &d);
            assert!(!r.valid, "{what} at {j}");
            let jump = r.segments.iter().find(|c| c.index as usize == j).unwrap();
            assert_eq!(jump.selected, Selected::LargestUpdate, "{what} at {j}");
            assert!(!jump.ok);
        }
    }
}

#[test]
fn a_steerer_forging_optimizer_state_is_caught_in_tolerance_mode() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 100, 10);
    // The target: a model from elsewhere that the steerer wants to end at.
    let target = tensors(&honest(&spec(&miner(9), &salt(9), 100, 100), &d).0[1]);
    // At every checkpoint, the momentum is rewritten to pull the weights toward the target; each
    // segment is then trained honestly from the forged state, so every parameter replays.
    let mut t = Trajectory(vec![Trainer::new(&sp, &d).unwrap().checkpoint()]);
    for i in 0..10u64 {
        let mut state = tensors(t.0.last().unwrap());
        if i > 0 {
            for (name, w) in target.iter().filter(|(n, _)| n.starts_with("model.")) {
                let param = name.strip_prefix("model.").unwrap();
                let m = format!("optim.momentum.{param}");
                let pull = (&state[name] - w) * 2.0;
                let forged = &state[&m] + pull;
                state.insert(m, forged);
            }
            *t.0.last_mut().unwrap() = encode(&state, i * 10);
        }
        let mut trainer = Trainer::from_checkpoint(&sp, &d, t.0.last().unwrap(), i * 10).unwrap();
        trainer.train_steps(&d, 10);
        t.0.push(trainer.checkpoint());
    }
    let distance_to_target = |bytes: &[u8]| {
        let w = tensors(bytes);
        target
            .iter()
            .filter(|(n, _)| n.starts_with("model."))
            .map(|(n, x)| verify::compare::relative_distance(&w[n], x))
            .sum::<f64>()
    };
    let honest_end = honest(&sp, &d).0.pop().unwrap();
    assert!(
        distance_to_target(t.0.last().unwrap()) < 0.5 * distance_to_target(&honest_end),
        "the forged momentum steered the weights"
    );
    let claim = t.claim(&a, &s);
    // A check over the parameters alone passes every segment.
    let params_only = Tolerance {
        parameters: LOOSE.parameters,
        optimizer: f64::INFINITY,
    };
    let r = judge(&sp, &claim, &t, &[2, 5, 8], 0, params_only, &d);
    assert!(r.valid, "{r:#?}");
    // Every tensor within its own bound: the forged momentum is named.
    let r = judge(&sp, &claim, &t, &[2, 5, 8], 0, LOOSE, &d);
    assert!(!r.valid);
    assert!(
        has(
            &r,
            |f| matches!(f, Finding::SegmentMismatch { tensor, .. } if tensor.starts_with("optim.momentum."))
        ),
        "{r:#?}"
    );
}

#[test]
fn a_checkpoint_recording_another_step_than_i_times_k_is_caught() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 100, 10);
    // From checkpoint 3 on, the miner says it is at step 0 and trains segment 3 on the first
    // batches again (its choice of data), recording steps 0, 10, … from there.
    let mut t = honest(
        &RunSpec {
            steps: 30,
            ..sp.clone()
        },
        &d,
    );
    let w3 = encode(&tensors(&t.0[3]), 0);
    t.0[3] = w3.clone();
    let mut trainer = Trainer::from_checkpoint(&sp, &d, &w3, 0).unwrap();
    for _ in 3..10 {
        trainer.train_steps(&d, 10);
        t.0.push(trainer.checkpoint());
    }
    let claim = ClaimFacts {
        steps: 100,
        ..t.claim(&a, &s)
    };
    let r = judge(&sp, &claim, &t, &[3], 0, LOOSE, &d);
    assert!(!r.valid);
    assert!(
        has(&r, |f| matches!(
            f,
            Finding::WrongStep {
                checkpoint: 3,
                expected: 30,
                ..
            }
        )),
        "{r:#?}"
    );
}

/// A source that serves another trajectory's bytes, or fails, or lies about indices.
struct Hostile<F: Fn(usize) -> anyhow::Result<(Vec<u8>, Proof)>>(F);

impl<F: Fn(usize) -> anyhow::Result<(Vec<u8>, Proof)>> CheckpointSource for Hostile<F> {
    fn fetch(&self, i: usize, _max_bytes: u64) -> anyhow::Result<(Vec<u8>, Proof)> {
        (self.0)(i)
    }
}

#[test]
fn unavailable_uncommitted_and_malformed_checkpoints_and_a_wrong_model_hash_are_findings() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 40, 10);
    let t = honest(&sp, &d);
    let claim = t.claim(&a, &s);
    let run = |source: &dyn CheckpointSource, claim: &ClaimFacts| {
        judge(&sp, claim, source, &[1], 0, Tolerance::EXACT, &d)
    };

    let gone = Hostile(|i| {
        if i == 2 {
            anyhow::bail!("peer went away")
        } else {
            t.fetch(i, u64::MAX)
        }
    });
    let r = run(&gone, &claim);
    assert!(
        has(
            &r,
            |f| matches!(f, Finding::Unavailable { checkpoint: 2, why } if why.contains("went away"))
        ),
        "{r:#?}"
    );

    // Checkpoint 1 served in place of 2, with checkpoint 1's (valid) proof.
    let swapped = Hostile(|i| t.fetch(if i == 2 { 1 } else { i }, u64::MAX));
    let r = run(&swapped, &claim);
    assert!(
        has(
            &r,
            |f| matches!(f, Finding::NotCommitted { checkpoint: 2, why } if why.contains("leaf 1"))
        ),
        "{r:#?}"
    );

    // Other bytes with checkpoint 2's proof.
    let other = honest(&spec(&miner(9), &salt(9), 40, 10), &d);
    let forged = Hostile(|i| {
        let (bytes, proof) = t.fetch(i, u64::MAX)?;
        Ok((if i == 2 { other.0[2].clone() } else { bytes }, proof))
    });
    let r = run(&forged, &claim);
    assert!(
        has(&r, |f| matches!(
            f,
            Finding::NotCommitted { checkpoint: 2, .. }
        )),
        "{r:#?}"
    );

    // Garbage committed under the root is no checkpoint of this model.
    let mut junk = Trajectory(t.0.clone());
    junk.0[2] = b"not a checkpoint".to_vec();
    let r = run(&junk, &junk.claim(&a, &s));
    assert!(
        has(&r, |f| matches!(
            f,
            Finding::NotACheckpoint { checkpoint: 2, .. }
        )),
        "{r:#?}"
    );
    let mut narrower = Trajectory(t.0.clone());
    let smaller = honest(
        &RunSpec {
            model: "mlp:8".parse().unwrap(),
            ..sp.clone()
        },
        &d,
    );
    narrower.0[2] = smaller.0[2].clone();
    let r = run(&narrower, &narrower.claim(&a, &s));
    assert!(
        has(
            &r,
            |f| matches!(f, Finding::NotACheckpoint { checkpoint: 2, why } if why.contains("shape"))
        ),
        "{r:#?}"
    );

    // The claimed model is not the last checkpoint.
    let claim_other = ClaimFacts {
        model_hash: checkpoint::hash(&t.0[2]),
        ..claim.clone()
    };
    let r = run(&t, &claim_other);
    assert!(!r.final_ok);
    assert!(
        has(&r, |f| matches!(f, Finding::FinalMismatch { .. })),
        "{r:#?}"
    );

    // And the honest source, for contrast.
    assert!(run(&t, &claim).valid);
}

#[test]
fn a_jump_prepared_in_the_optimizer_state_is_caught_by_replaying_the_segment_before_it() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 200, 2);
    let target = tensors(&honest(&spec(&miner(9), &salt(9), 200, 200), &d).0[1]);
    let j = 60;
    // Honest to W_{j+1}; there the momentum is forged so that segment j+1's first step lands on
    // the target; from there on every segment is trained honestly. Segment j+1 makes the big
    // jump and replays exactly from the forged state.
    let mut t = honest(
        &RunSpec {
            steps: (j as u64 + 1) * 2,
            ..sp.clone()
        },
        &d,
    );
    let mut state = tensors(t.0.last().unwrap());
    let (lr, beta) = (0.05, 0.9);
    for (name, w) in target.iter().filter(|(n, _)| n.starts_with("model.")) {
        let m = format!("optim.momentum.{}", name.strip_prefix("model.").unwrap());
        let forged = (&state[name] - w) / (lr * beta);
        state.insert(m, forged);
    }
    *t.0.last_mut().unwrap() = encode(&state, (j as u64 + 1) * 2);
    continue_honestly(&mut t, &sp, &d);
    let claim = t.claim(&a, &s);
    let sampled = sample_missing(j, 100, 5);
    let r = judge(&sp, &claim, &t, &sampled, 3, Tolerance::EXACT, &d);
    assert!(!r.valid);
    let jump = r
        .segments
        .iter()
        .find(|c| c.index as usize == j + 1)
        .unwrap();
    assert!(jump.ok, "the jump itself replays from the forged state");
    let before = r.segments.iter().find(|c| c.index as usize == j).unwrap();
    assert_eq!(before.selected, Selected::LargestUpdate);
    assert!(
        !before.ok,
        "the segment before shows the forged momentum: {r:#?}"
    );
}

#[test]
fn a_checkpoint_holding_a_nan_is_refused_in_tolerance_mode() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 60, 10);
    let mut t = honest(&sp, &d);
    let mut state = tensors(&t.0[3]);
    let name = state.keys().next_back().unwrap().clone();
    let poisoned = state[&name].copy();
    let _ = poisoned.flatten(0, -1).get(0).fill_(f64::NAN);
    state.insert(name.clone(), poisoned);
    t.0[3] = encode(&state, 30);
    let r = judge(&sp, &t.claim(&a, &s), &t, &[2], 0, LOOSE, &d);
    assert!(!r.valid);
    assert!(
        has(
            &r,
            |f| matches!(f, Finding::NotACheckpoint { checkpoint: 3, why } if why.contains("NaN") && why.contains(&name))
        ),
        "{r:#?}"
    );
}

#[test]
fn a_checkpoint_larger_than_any_of_the_models_is_refused() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 40, 10);
    let mut t = honest(&sp, &d);
    let mut state = tensors(&t.0[2]);
    state.insert(
        "model.extra".into(),
        Tensor::zeros([1 << 16], (tch::Kind::Float, tch::Device::Cpu)),
    );
    t.0[2] = encode(&state, 20);
    let r = judge(&sp, &t.claim(&a, &s), &t, &[1], 0, Tolerance::EXACT, &d);
    assert!(
        has(
            &r,
            |f| matches!(f, Finding::NotACheckpoint { checkpoint: 2, why } if why.contains("bytes"))
        ),
        "{r:#?}"
    );
}

#[test]
fn a_verification_says_where_its_time_went_even_when_it_stops_early() {
    let d = data();
    let (a, s) = (miner(1), salt(1));
    let sp = spec(&a, &s, 100, 10);
    let t = honest(&sp, &d);
    let claim = t.claim(&a, &s);
    // A source that takes 5 ms per read, like a network would, and can lose checkpoint `gone`.
    let slow = |gone: Option<usize>| {
        let t = &t;
        Hostile(move |i| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            anyhow::ensure!(Some(i) != gone, "checkpoint {i} is gone");
            t.fetch(i, u64::MAX)
        })
    };
    // Late segments move least: the two largest updates are others.
    let r = judge(&sp, &claim, &slow(None), &[9], 2, Tolerance::EXACT, &d);
    assert!(r.valid, "{r:#?}");
    let w = r.timings;
    // 11 checkpoints read once, then again for each replayed segment and the evaluation.
    assert!(w.transfer >= 0.055, "{w:?}");
    assert!(
        w.replay_sampled > 0.0 && w.replay_top_q > 0.0 && w.evaluation > 0.0,
        "{w:?}"
    );
    // A claim whose checkpoint 5 cannot be had is judged on the first pass: the reads are
    // still counted, nothing is replayed.
    let r = judge(
        &sp,
        &claim,
        &slow(Some(5)),
        &[1, 6],
        2,
        Tolerance::EXACT,
        &d,
    );
    assert!(
        has(&r, |f| matches!(f, Finding::Unavailable { .. })),
        "{r:#?}"
    );
    assert!(r.timings.transfer >= 0.025, "{:?}", r.timings);
    assert_eq!(r.timings.replay_sampled, 0.0);
}
