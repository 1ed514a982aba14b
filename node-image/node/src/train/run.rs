//! A training run: deterministic from its run seed, checkpointed every `k` steps, replayable
//! from any checkpoint.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use pot_protocol::{Hash, merkle};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use super::checkpoint;
use super::data::{Dataset, epoch_order};
use super::model::{ModelSpec, build, reinitialise};
use super::optim::{Optimizer, OptimizerConfig};

/// The training loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Loss {
    #[default]
    CrossEntropy,
    /// Mean squared error between the outputs and one-hot targets.
    Mse,
}

/// Everything that determines a run's trajectory.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub model: ModelSpec,
    pub optimizer: OptimizerConfig,
    pub loss: Loss,
    pub batch_size: i64,
    pub steps: u64,
    /// A checkpoint every `checkpoint_interval` steps.
    pub checkpoint_interval: u64,
    /// `H(task seed ‖ miner ‖ salt)`: initial parameters and data order come from it.
    pub run_seed: Hash,
    /// Where the tensors live while training. Not part of what the run commits to: `W_0` is
    /// always initialised on the CPU and then moved, so it is the same on every device; but
    /// GPU kernels are not bit-identical to CPU ones, so replays across devices need the
    /// task's `replay_tolerance`.
    pub device: Device,
}

/// What a run produced: the hash of each checkpoint `W_0..=W_n` and their Merkle root.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub checkpoints: Vec<Hash>,
    pub root: Hash,
    pub final_loss: f32,
    /// Seconds spent taking, hashing and storing checkpoints (the rest of the run's time is
    /// training proper).
    pub checkpoint_seconds: f64,
}

/// Two records are the same run when their checkpoints, root and final loss are: how long
/// checkpointing took is not part of the run.
impl PartialEq for RunRecord {
    fn eq(&self, other: &RunRecord) -> bool {
        (&self.checkpoints, &self.root, self.final_loss)
            == (&other.checkpoints, &other.root, other.final_loss)
    }
}

/// What an unfinished run left on disk: the hashes of its checkpoints `0..=j` and the bytes of
/// checkpoint `j`.
pub struct Progress {
    pub hashes: Vec<Hash>,
    pub last: Vec<u8>,
}

/// A model, its optimizer and the step it is at.
pub struct Trainer {
    spec: RunSpec,
    vs: nn::VarStore,
    model: Box<dyn ModuleT>,
    optimizer: Optimizer,
    step: u64,
}

impl Trainer {
    /// The run's initial state `W_0`, from its run seed.
    pub fn new(spec: &RunSpec, data: &Dataset) -> anyhow::Result<Trainer> {
        // libtorch's generator initialises the parameters; seed it from the run seed, and keep
        // other runs in this process off it until they are drawn.
        let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(spec.run_seed.low_u64() as i64 & i64::MAX);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = build(
            &spec.model,
            &vs.root(),
            data.features(),
            data.image,
            data.classes,
        )?;
        if matches!(spec.model, ModelSpec::TorchScript(_)) {
            reinitialise(&params(&vs));
        }
        if spec.device != Device::Cpu {
            if spec.device.is_cuda() {
                // cuDNN's autotuner picks kernels by timing them: runs would differ.
                tch::Cuda::cudnn_set_benchmark(false);
            }
            vs.set_device(spec.device);
        }
        let optimizer = Optimizer::new(spec.optimizer, &params(&vs));
        Ok(Trainer {
            spec: spec.clone(),
            vs,
            model,
            optimizer,
            step: 0,
        })
    }

    /// Resume from a checkpoint's bytes at `step`, the step the caller knows the checkpoint is
    /// at (checkpoint `i` of a run is at `i·k`): the checkpoint must record that step, so a
    /// checkpoint cannot choose which batches its segment trains on. Every parameter and
    /// optimizer state tensor must be there with the model's shapes, and nothing else.
    pub fn from_checkpoint(
        spec: &RunSpec,
        data: &Dataset,
        bytes: &[u8],
        step: u64,
    ) -> anyhow::Result<Trainer> {
        let mut t = Trainer::new(spec, data)?;
        let ckpt = checkpoint::decode(bytes)?;
        let targets = t.named_tensors();
        ckpt.check_layout(step, &checkpoint::shapes(&targets))?;
        for (name, loaded) in &ckpt.tensors {
            tch::no_grad(|| targets[name].shallow_clone().copy_(loaded));
        }
        t.step = step;
        Ok(t)
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// Parameters as `model.<name>`, optimizer state as `optim.<slot>.<name>`.
    fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut all = BTreeMap::new();
        for (n, t) in params(&self.vs) {
            all.insert(format!("model.{n}"), t);
        }
        for (n, t) in &self.optimizer.state {
            all.insert(format!("optim.{n}"), t.shallow_clone());
        }
        all
    }

    /// The canonical bytes of the current state.
    pub fn checkpoint(&self) -> Vec<u8> {
        let meta = [("step".to_string(), self.step.to_string())].into();
        checkpoint::encode(&self.named_tensors(), &meta)
    }

    /// Train `n` steps; returns the last batch loss.
    pub fn train_steps(&mut self, data: &Dataset, n: u64) -> f32 {
        let per_epoch = (data.len() / self.spec.batch_size).max(1) as u64;
        let params = params(&self.vs);
        let mut loss_value = f32::NAN;
        let mut order: Option<(u64, Vec<i64>)> = None;
        for _ in 0..n {
            let epoch = self.step / per_epoch;
            let b = (self.step % per_epoch) as usize;
            if order.as_ref().map(|(e, _)| *e) != Some(epoch) {
                order = Some((
                    epoch,
                    epoch_order(&self.spec.run_seed, epoch, data.len() as usize),
                ));
            }
            let idx = &order.as_ref().expect("set above").1;
            let bs = self.spec.batch_size as usize;
            // A batch larger than the data set wraps around it (one batch per epoch).
            let batch: Vec<i64> = if (b + 1) * bs <= idx.len() {
                idx[b * bs..(b + 1) * bs].to_vec()
            } else {
                idx.iter().cycle().skip(b * bs).take(bs).copied().collect()
            };
            // A step's randomness (dropout) comes from the run seed and the step alone, so a
            // replay from any checkpoint draws what the run drew, and nobody chooses it. Only a
            // TorchScript model can draw; its steps hold the process's generator meanwhile.
            let _generator = matches!(self.spec.model, ModelSpec::TorchScript(_)).then(|| {
                let g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
                tch::manual_seed(step_seed(&self.spec.run_seed, self.step));
                g
            });
            let (x, y) = data.batch(&batch);
            let (x, y) = (x.to_device(self.spec.device), y.to_device(self.spec.device));
            for p in params.values() {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let out = self.model.forward_t(&x, true);
            let loss = self.loss(&out, &y, data.classes);
            loss.backward();
            self.step += 1;
            self.optimizer.step(&params, self.step);
            loss_value = loss.double_value(&[]) as f32;
        }
        loss_value
    }

    /// The task's loss of `out` against labels `y`, averaged.
    fn loss(&self, out: &Tensor, y: &Tensor, classes: i64) -> Tensor {
        match self.spec.loss {
            Loss::CrossEntropy => out.cross_entropy_for_logits(y),
            Loss::Mse => {
                let target = y.one_hot(classes).to_kind(tch::Kind::Float);
                out.mse_loss(&target, tch::Reduction::Mean)
            }
        }
    }

    /// The task's metric on `data`: accuracy, or the mean loss.
    pub fn metric(&self, kind: pot_protocol::task::MetricKind, data: &Dataset) -> f64 {
        match kind {
            pot_protocol::task::MetricKind::Accuracy => self.accuracy(data),
            pot_protocol::task::MetricKind::Loss => self.mean_loss(data),
        }
    }

    /// The task's loss on all of `data`, in evaluation mode.
    pub fn mean_loss(&self, data: &Dataset) -> f64 {
        let _generator = matches!(self.spec.model, ModelSpec::TorchScript(_)).then(|| {
            let g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(step_seed(&self.spec.run_seed, u64::MAX));
            g
        });
        tch::no_grad(|| {
            let device = self.spec.device;
            let out = self.model.forward_t(&data.x.to_device(device), false);
            self.loss(&out, &data.y.to_device(device), data.classes)
                .double_value(&[])
        })
    }

    /// Accuracy on `data`. A TorchScript model could draw in evaluation mode too: it draws
    /// from the run seed, holding the process's generator.
    pub fn accuracy(&self, data: &Dataset) -> f64 {
        let _generator = matches!(self.spec.model, ModelSpec::TorchScript(_)).then(|| {
            let g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(step_seed(&self.spec.run_seed, u64::MAX));
            g
        });
        tch::no_grad(|| {
            let device = self.spec.device;
            self.model
                .forward_t(&data.x.to_device(device), false)
                .accuracy_for_logits(&data.y.to_device(device))
                .double_value(&[])
        })
    }

    /// A whole run: `W_0`, then a checkpoint every `k` steps, each handed to `sink` with its
    /// index and the last batch loss as it is made. Returns the record and the trained state.
    pub fn run(
        spec: &RunSpec,
        data: &Dataset,
        sink: impl FnMut(usize, &[u8], f32) -> anyhow::Result<()>,
    ) -> anyhow::Result<(RunRecord, Trainer)> {
        Trainer::run_from(spec, data, None, sink)
    }

    /// `run`, continuing from what an unfinished run left (`progress`): checkpoint 0 must be
    /// this run's initialisation, and training resumes at the last checkpoint. Per-step seeds
    /// and batch orders derive from the run seed and the step, so the checkpoints that follow
    /// are the ones an uninterrupted run would have written.
    pub fn run_from(
        spec: &RunSpec,
        data: &Dataset,
        progress: Option<Progress>,
        mut sink: impl FnMut(usize, &[u8], f32) -> anyhow::Result<()>,
    ) -> anyhow::Result<(RunRecord, Trainer)> {
        let k = spec.checkpoint_interval;
        if k == 0 || !spec.steps.is_multiple_of(k) {
            bail!(
                "checkpoint interval {k} must be positive and divide the {} steps",
                spec.steps
            );
        }
        let n = (spec.steps / k) as usize;
        let mut t = Trainer::new(spec, data)?;
        let started = Instant::now();
        let w0 = t.checkpoint();
        let mut hashes = vec![checkpoint::hash(&w0)];
        let first = match progress {
            None => {
                sink(0, &w0, f32::NAN).context("storing checkpoint 0")?;
                1
            }
            Some(p) => {
                if p.hashes.first() != hashes.first() {
                    bail!(
                        "the first checkpoint on disk is not this run's initialisation; it \
                         belongs to another run"
                    );
                }
                let j = (p.hashes.len() - 1).min(n);
                if j > 0 {
                    t = Trainer::from_checkpoint(spec, data, &p.last, j as u64 * k)
                        .with_context(|| format!("resuming from checkpoint {j}"))?;
                }
                hashes = p.hashes[..=j].to_vec();
                j + 1
            }
        };
        let mut checkpoint_seconds = started.elapsed().as_secs_f64();
        let mut loss = f32::NAN;
        for i in first..=n {
            loss = t.train_steps(data, k);
            let started = Instant::now();
            let w = t.checkpoint();
            hashes.push(checkpoint::hash(&w));
            sink(i, &w, loss).with_context(|| format!("storing checkpoint {i}"))?;
            checkpoint_seconds += started.elapsed().as_secs_f64();
        }
        let record = RunRecord {
            root: merkle::root(&hashes),
            checkpoints: hashes,
            final_loss: loss,
            checkpoint_seconds,
        };
        Ok((record, t))
    }
}

/// libtorch's default generators are process-wide: whoever seeds them holds this until it has
/// drawn, so runs trained side by side in one process (tests, a miner with several tasks) do
/// not draw from each other's seeds.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The seed of libtorch's generators for step `step` of the run with seed `run_seed`.
fn step_seed(run_seed: &Hash, step: u64) -> i64 {
    Hash::tagged("pot/step-rng", &[run_seed.as_bytes(), &step.to_le_bytes()]).low_u64() as i64
        & i64::MAX
}

fn params(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().collect()
}
