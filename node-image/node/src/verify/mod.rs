//! Verification of a training claim, as a validator does it, from what the chain commits to:
//! the task (its run spec), the claim (checkpoint root, model hash, steps), the miner's address
//! and salt, and the beacon-sampled segments. Checkpoints come from a [`CheckpointSource`] and
//! are believed only through their Merkle proofs against the on-chain root; anything a miner
//! wrote besides (its manifest) is never evidence.
//!
//! The checks:
//! - `W_0` is the initialisation bound to `H(task seed ‖ miner ‖ salt)` (a copied trajectory
//!   fails it), and the last checkpoint is the claimed model;
//! - every checkpoint `i` records step `i·k` (its batches follow from the run seed and `i`);
//! - every committed checkpoint is fetched (none larger than this model's, none holding a NaN
//!   or an infinity) and the update norms `‖W_{i+1} − W_i‖` computed; the `s` sampled segments,
//!   the `Q` with the largest updates and the segment before each of those are replayed (the
//!   Proof-of-Learning paper's top-Q check: a trajectory that jumps once to a foreign model has
//!   one huge update, so it is caught every time, not with probability `s/n`). A jump spread
//!   thinly over more than `Q` segments, each below the `Q`-th largest honest update, is caught
//!   only by the sample;
//! - a replay must give the committed checkpoint bit for bit, or under a task's tolerance every
//!   tensor within its own bound ([`compare`]).

pub mod compare;
pub mod source;

use std::collections::BTreeMap;
use std::time::Instant;

use pot_protocol::merkle::Proof;
use pot_protocol::{Address, Hash};
use serde::Serialize;
use tch::Tensor;

use crate::train::checkpoint::{self, CheckpointError};
use crate::train::data::Dataset;
use crate::train::{RunSpec, Trainer};
pub use compare::{Comparison, Tolerance, Worst};
pub use source::{CheckpointSource, MemorySource, NetworkSource, RunDirSource};

/// What the chain records about one claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClaimFacts {
    pub miner: Address,
    pub salt: Hash,
    /// Merkle root over the checkpoint hashes `W_0..=W_n`.
    pub checkpoint_root: Hash,
    /// Hash of the final checkpoint.
    pub model_hash: Hash,
    pub steps: u64,
    /// The hyper-parameters the claim names (one per range the task declares).
    pub hyper: Vec<pot_protocol::task::HyperValue>,
}

/// What to replay and how strictly.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The beacon-sampled segments (`s` of them); there must be at least one.
    pub sampled: Vec<u32>,
    /// Also replay the `Q` segments with the largest parameter updates.
    pub top_q: u32,
    pub tolerance: Tolerance,
}

/// Why a segment is replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selected {
    Sampled,
    LargestUpdate,
    /// Both sampled and among the largest updates.
    Both,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegmentCheck {
    pub index: u32,
    pub selected: Selected,
    pub ok: bool,
    /// The tensor furthest from the committed one, relative to its bound (absent when
    /// bit-identical).
    pub worst: Option<Worst>,
    /// The largest relative distance among the model's tensors and among the optimizer's.
    pub parameters: f64,
    pub optimizer: f64,
}

/// A reason the claim is invalid. Each names the checkpoint or segment at fault.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    #[error("checkpoint {checkpoint} could not be had: {why}")]
    Unavailable { checkpoint: usize, why: String },
    #[error("checkpoint {checkpoint} is not under the claim's checkpoint root: {why}")]
    NotCommitted { checkpoint: usize, why: String },
    #[error("checkpoint {checkpoint} is not a checkpoint of this task's model: {why}")]
    NotACheckpoint { checkpoint: usize, why: String },
    #[error(
        "checkpoint {checkpoint} records step {recorded}; checkpoint {checkpoint} is at step {expected}"
    )]
    WrongStep {
        checkpoint: usize,
        recorded: String,
        expected: u64,
    },
    #[error("W_0 is not the initialisation bound to the miner's run seed")]
    InitMismatch,
    #[error("the last checkpoint {last} is not the claimed model {claimed}")]
    FinalMismatch { last: Hash, claimed: Hash },
    #[error("segment {segment} does not replay: {tensor} is {distance:e} away (bound {bound:e})")]
    SegmentMismatch {
        segment: u32,
        tensor: String,
        distance: f64,
        bound: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub init_ok: bool,
    pub final_ok: bool,
    /// Every replayed segment, ascending.
    pub segments: Vec<SegmentCheck>,
    /// `‖W_{i+1} − W_i‖` over the model's tensors, for every segment (empty when not every
    /// checkpoint could be read).
    pub update_norms: Vec<f64>,
    /// The claimed model's accuracy on the eval set, when it loads.
    pub accuracy: Option<f64>,
    /// Its mean loss on the eval set, when it loads.
    pub loss: Option<f64>,
    pub findings: Vec<Finding>,
    /// No findings.
    pub valid: bool,
    /// Where the time went (a node adds it to its work counters).
    pub timings: Timings,
}

/// Seconds a verification spent on each kind of work: the parts of a task's cost that fall
/// on its validators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Reading checkpoints from the source (the network, for a validator).
    pub transfer: f64,
    /// Replaying the beacon's sampled segments.
    pub replay_sampled: f64,
    /// Replaying the largest-update segments besides.
    pub replay_top_q: f64,
    /// Scoring the final model on the eval set.
    pub evaluation: f64,
}

/// A source that adds the time its reads take to a counter.
struct Timed<'a> {
    inner: &'a dyn CheckpointSource,
    seconds: std::cell::Cell<f64>,
}

impl CheckpointSource for Timed<'_> {
    fn fetch(&self, i: usize, max_bytes: u64) -> anyhow::Result<(Vec<u8>, Proof)> {
        let started = Instant::now();
        let got = self.inner.fetch(i, max_bytes);
        self.seconds
            .set(self.seconds.get() + started.elapsed().as_secs_f64());
        got
    }
}

/// Verify `claim` for the task with seed `task_seed` whose run spec for this claim's miner and
/// salt is `spec`, reading checkpoints from `source`. An error is the validator's own problem (a plan that
/// checks nothing, a spec that is not the claim's); everything wrong with the claim is a
/// [`Finding`] in the report.
pub fn verify(
    spec: &RunSpec,
    task_seed: u64,
    claim: &ClaimFacts,
    plan: &Plan,
    source: &dyn CheckpointSource,
    train: &Dataset,
    eval: &Dataset,
) -> anyhow::Result<Report> {
    // Reads are timed whichever way the verification ends (a claim found bad early included).
    let timed = Timed {
        inner: source,
        seconds: Default::default(),
    };
    let mut report = verify_timed(spec, task_seed, claim, plan, &timed, train, eval)?;
    report.timings.transfer = timed.seconds.get();
    Ok(report)
}

fn verify_timed(
    spec: &RunSpec,
    task_seed: u64,
    claim: &ClaimFacts,
    plan: &Plan,
    source: &dyn CheckpointSource,
    train: &Dataset,
    eval: &Dataset,
) -> anyhow::Result<Report> {
    let k = spec.checkpoint_interval;
    anyhow::ensure!(
        k > 0 && spec.steps.is_multiple_of(k),
        "checkpoint interval {k} must be positive and divide the {} steps",
        spec.steps
    );
    anyhow::ensure!(
        spec.steps == claim.steps,
        "the claim is for {} steps, the task asks for {}",
        claim.steps,
        spec.steps
    );
    anyhow::ensure!(
        spec.run_seed == pot_protocol::tx::run_seed(task_seed, &claim.miner, &claim.salt),
        "the run spec's seed is not this claim's miner and salt"
    );
    let n = (spec.steps / k) as usize;
    anyhow::ensure!(
        !plan.sampled.is_empty(),
        "no segments to replay: a verification that replays nothing proves nothing"
    );
    if let Some(&bad) = plan.sampled.iter().find(|&&i| i as usize >= n) {
        anyhow::bail!("segment {bad} does not exist: the run has {n} segments");
    }

    let own_w0 = Trainer::new(spec, train)?.checkpoint();
    let shapes = checkpoint::shapes(&checkpoint::decode(&own_w0)?.tensors);
    // Checkpoints of this model differ from W_0 only in the step's digits (and the header's
    // padding): anything longer is refused before it is read whole.
    let limits = Limits {
        n,
        max_bytes: own_w0.len() as u64 + 64,
    };
    let mut report = Report {
        init_ok: false,
        final_ok: false,
        segments: Vec::new(),
        update_norms: Vec::new(),
        accuracy: None,
        loss: None,
        findings: Vec::new(),
        valid: false,
        timings: Timings::default(),
    };

    // Every checkpoint: under the root, at its step, of this model; and the update norms.
    let mut hashes = Vec::with_capacity(n + 1);
    let mut previous: Option<BTreeMap<String, Tensor>> = None;
    for i in 0..=n {
        let (bytes, hash) = match fetch(source, claim, &limits, i) {
            Ok(x) => x,
            Err(f) => return Ok(finish(report, f)),
        };
        let model = match model_tensors(&bytes, &shapes, i as u64 * k) {
            Ok(m) => m,
            Err(e) => return Ok(finish(report, checkpoint_finding(i, e))),
        };
        if let Some(prev) = &previous {
            report.update_norms.push(update_norm(prev, &model));
        }
        previous = Some(model);
        hashes.push(hash);
    }
    report.init_ok = hashes[0] == checkpoint::hash(&own_w0);
    if !report.init_ok {
        report.findings.push(Finding::InitMismatch);
    }
    report.final_ok = hashes[n] == claim.model_hash;
    if !report.final_ok {
        report.findings.push(Finding::FinalMismatch {
            last: hashes[n],
            claimed: claim.model_hash,
        });
    }

    for (index, selected) in selection(&plan.sampled, &report.update_norms, plan.top_q) {
        let i = index as usize;
        let (from, to) = match (
            refetch(source, claim, &limits, i, &hashes),
            refetch(source, claim, &limits, i + 1, &hashes),
        ) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(f), _) | (_, Err(f)) => return Ok(finish(report, f)),
        };
        let started = Instant::now();
        let mut t = match Trainer::from_checkpoint(spec, train, &from, i as u64 * k) {
            Ok(t) => t,
            Err(e) => return Ok(finish(report, checkpoint_finding(i, e))),
        };
        t.train_steps(train, k);
        let c = compare::compare(&t.checkpoint(), &to, plan.tolerance)
            .map_err(|e| anyhow::anyhow!("checkpoint {} was checked: {e}", i + 1))?;
        if !c.ok {
            let w = c.worst.clone().expect("a failed comparison names a tensor");
            report.findings.push(Finding::SegmentMismatch {
                segment: index,
                tensor: w.tensor,
                distance: w.distance,
                bound: w.bound,
            });
        }
        report.segments.push(SegmentCheck {
            index,
            selected,
            ok: c.ok,
            worst: c.worst,
            parameters: c.parameters,
            optimizer: c.optimizer,
        });
        let seconds = started.elapsed().as_secs_f64();
        match selected {
            Selected::LargestUpdate => report.timings.replay_top_q += seconds,
            Selected::Sampled | Selected::Both => report.timings.replay_sampled += seconds,
        }
    }

    let last = match refetch(source, claim, &limits, n, &hashes) {
        Ok(bytes) => bytes,
        Err(f) => return Ok(finish(report, f)),
    };
    let started = Instant::now();
    match Trainer::from_checkpoint(spec, train, &last, spec.steps) {
        Ok(t) => {
            report.accuracy = Some(t.accuracy(eval));
            report.loss = Some(t.mean_loss(eval));
        }
        Err(e) => return Ok(finish(report, checkpoint_finding(n, e))),
    }
    report.timings.evaluation = started.elapsed().as_secs_f64();
    report.valid = report.findings.is_empty();
    Ok(report)
}

fn finish(mut report: Report, finding: Finding) -> Report {
    report.findings.push(finding);
    report.valid = false;
    report
}

/// What any checkpoint of the claim must fit: `n` segments, and at most `max_bytes`.
struct Limits {
    n: usize,
    max_bytes: u64,
}

/// Checkpoint `i` and its hash, if its proof puts it at leaf `i` of the claim's root.
fn fetch(
    source: &dyn CheckpointSource,
    claim: &ClaimFacts,
    limits: &Limits,
    i: usize,
) -> Result<(Vec<u8>, Hash), Finding> {
    let n = limits.n;
    let (bytes, proof) = source
        .fetch(i, limits.max_bytes)
        .map_err(|e| Finding::Unavailable {
            checkpoint: i,
            why: format!("{e:#}"),
        })?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(Finding::NotACheckpoint {
            checkpoint: i,
            why: format!(
                "{} bytes; a checkpoint of this model has at most {}",
                bytes.len(),
                limits.max_bytes
            ),
        });
    }
    let hash = checkpoint::hash(&bytes);
    let not_committed = |why: String| Finding::NotCommitted { checkpoint: i, why };
    if proof.index != i as u64 || proof.tree_size != n as u64 + 1 {
        return Err(not_committed(format!(
            "its proof is for leaf {} of {}, not leaf {i} of {}",
            proof.index,
            proof.tree_size,
            n + 1
        )));
    }
    if !proof.verify(&claim.checkpoint_root, &hash) {
        return Err(not_committed(format!(
            "SHA-256 {hash} does not prove under {}",
            claim.checkpoint_root
        )));
    }
    Ok((bytes, hash))
}

/// Checkpoint `i` again, which must be the one hashed in the first pass.
fn refetch(
    source: &dyn CheckpointSource,
    claim: &ClaimFacts,
    limits: &Limits,
    i: usize,
    hashes: &[Hash],
) -> Result<Vec<u8>, Finding> {
    let (bytes, hash) = fetch(source, claim, limits, i)?;
    if hash != hashes[i] {
        // Two leaves under one root at one index would be a SHA-256 collision.
        return Err(Finding::NotCommitted {
            checkpoint: i,
            why: format!("served {hash} now, {} before", hashes[i]),
        });
    }
    Ok(bytes)
}

fn checkpoint_finding(i: usize, e: anyhow::Error) -> Finding {
    match e.downcast::<CheckpointError>() {
        Ok(CheckpointError::WrongStep { recorded, expected }) => Finding::WrongStep {
            checkpoint: i,
            recorded,
            expected,
        },
        Ok(other) => Finding::NotACheckpoint {
            checkpoint: i,
            why: other.to_string(),
        },
        Err(e) => Finding::NotACheckpoint {
            checkpoint: i,
            why: format!("{e:#}"),
        },
    }
}

/// The `model.*` tensors of a checkpoint at `step`, which must hold exactly this model's
/// tensors with their shapes.
fn model_tensors(
    bytes: &[u8],
    shapes: &BTreeMap<String, Vec<i64>>,
    step: u64,
) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let c = checkpoint::decode(bytes)?;
    c.check_layout(step, shapes)?;
    // A NaN or an infinity would make every distance to it meaningless (and training from it
    // gives NaN everywhere): no honest checkpoint holds one.
    if let Some(name) = c
        .tensors
        .iter()
        .find(|(_, t)| t.isfinite().all().int64_value(&[]) == 0)
        .map(|(n, _)| n)
    {
        return Err(CheckpointError::NotFinite(name.clone()).into());
    }
    Ok(c.tensors
        .into_iter()
        .filter(|(n, _)| n.starts_with("model."))
        .collect())
}

/// `‖b − a‖` over all model tensors.
fn update_norm(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    a.iter()
        .map(|(name, x)| {
            (b[name].to_kind(tch::Kind::Double) - x.to_kind(tch::Kind::Double))
                .square()
                .sum(tch::Kind::Double)
                .double_value(&[])
        })
        .sum::<f64>()
        .sqrt()
}

/// The sampled segments, the `q` with the largest updates (ties to the lower index; a NaN
/// counts as the largest), and the segment before each of those, ascending, each with why it
/// is there. The one before is replayed because a jump can be prepared in the state it starts
/// from: a forged momentum or Adam moment at `W_i` makes segment `i` jump while replaying
/// exactly from it, and only segment `i − 1`'s replay shows the forgery.
pub fn selection(sampled: &[u32], update_norms: &[f64], q: u32) -> Vec<(u32, Selected)> {
    let size = |i: u32| {
        let x = update_norms[i as usize];
        if x.is_nan() { f64::INFINITY } else { x }
    };
    let mut by_size: Vec<u32> = (0..update_norms.len() as u32).collect();
    by_size.sort_by(|&a, &b| size(b).total_cmp(&size(a)).then(a.cmp(&b)));
    let mut largest: Vec<u32> = by_size.into_iter().take(q as usize).collect();
    let before: Vec<u32> = largest.iter().filter_map(|i| i.checked_sub(1)).collect();
    largest.extend(before);
    let mut out: BTreeMap<u32, Selected> = BTreeMap::new();
    for &i in sampled {
        out.insert(i, Selected::Sampled);
    }
    for i in largest {
        out.entry(i)
            .and_modify(|s| *s = Selected::Both)
            .or_insert(Selected::LargestUpdate);
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_adds_the_largest_updates_to_the_sample() {
        let norms = [5.0, 1.0, 9.0, 1.0, 7.0, 0.5];
        // 2 and 4 are the largest; 1 and 3 come before them.
        assert_eq!(
            selection(&[1, 4], &norms, 2),
            vec![
                (1, Selected::Both),
                (2, Selected::LargestUpdate),
                (3, Selected::LargestUpdate),
                (4, Selected::Both)
            ]
        );
        assert_eq!(selection(&[3], &norms, 0), vec![(3, Selected::Sampled)]);
        // Ties go to the lower index; a NaN of either sign counts as the largest.
        assert_eq!(
            selection(&[], &[1.0, 2.0, 2.0, 0.5, -f64::NAN, 0.1], 2),
            vec![
                (0, Selected::LargestUpdate),
                (1, Selected::LargestUpdate),
                (3, Selected::LargestUpdate),
                (4, Selected::LargestUpdate)
            ]
        );
    }
}
