//! The training spec a person (or, later, the miner role) hands to `pot-node train`, as YAML.

use std::path::Path;

use anyhow::{Context, bail};
use pot_protocol::{Address, Hash};
use serde::{Deserialize, Serialize};

use super::data::Dataset;
use super::datasets;
use super::fetch::{Cache, fetch};
use super::model::ModelSpec;
use super::optim::{OptimizerConfig, OptimizerKind};
use super::run::{Loss, RunSpec};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// `logistic`, `mlp:W1,W2,...` or `lenet5`.
    pub model: String,
    pub dataset: DatasetFile,
    pub optimizer: OptimizerFile,
    /// `cross_entropy` (default) or `mse` (against one-hot targets).
    #[serde(default)]
    pub loss: LossFile,
    pub batch_size: i64,
    pub steps: u64,
    pub checkpoint_interval: u64,
    /// The task seed; the run seed is `H(seed ‖ miner ‖ salt)`.
    pub seed: u64,
    /// Examples per thousand held out for evaluation (when no separate eval set is given).
    #[serde(default = "default_holdout")]
    pub holdout_per_mille: u32,
    /// Largest relative L2 distance `‖replayed − committed‖ / ‖committed‖` each model tensor
    /// of a replayed segment may be off by; 0 (with `optimizer_tolerance` 0) demands
    /// bit-identical checkpoints.
    #[serde(default)]
    pub replay_tolerance: f64,
    /// The same bound for each optimizer state tensor (momentum, Adam's moments); by default
    /// thirty times `replay_tolerance`: honest replays on this project's benchmark CPU drift
    /// 10–15 times further in optimizer state than in parameters (BENCHMARKS.md).
    #[serde(default)]
    pub optimizer_tolerance: Option<f64>,
    /// Besides the sampled segments, a validator replays the `top_q` segments with the largest
    /// parameter updates (a trajectory that jumps to a foreign model has one huge update).
    #[serde(default = "default_top_q")]
    pub top_q: u32,
    /// libtorch intra-op threads for training and replaying on the CPU when replays must be
    /// bit-identical: some of libtorch's sums split by thread, so the count is part of the task.
    #[serde(default = "default_cpu_threads")]
    pub cpu_threads: i32,
}

fn default_cpu_threads() -> i32 {
    1
}

fn default_top_q() -> u32 {
    3
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossFile {
    #[default]
    CrossEntropy,
    Mse,
}

fn default_holdout() -> u32 {
    200
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetFile {
    /// A path, an http(s) URL, `builtin:digits` or `builtin:mnist-5k`.
    pub locator: String,
    pub sha256: Hash,
    /// `csv`, `safetensors` or `idx` (ignored for built-ins). For `idx` the locator holds the
    /// images and `labels` the labels file.
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default)]
    pub labels: Option<LabelsFile>,
    /// Multiply every feature by this (e.g. 1/255 for raw pixels).
    #[serde(default = "one")]
    pub feature_scale: f64,
    /// `[channels, height, width]` when the features are flattened images.
    #[serde(default)]
    pub image: Option<[i64; 3]>,
}

/// The labels file of an IDX dataset (MNIST ships images and labels apart).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsFile {
    pub locator: String,
    pub sha256: Hash,
}

fn default_format() -> String {
    "csv".into()
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum OptimizerFile {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Adamw {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}

impl TaskFile {
    pub fn read(path: &Path) -> anyhow::Result<TaskFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let t: TaskFile =
            serde_yaml::from_str(&text).with_context(|| format!("task file {}", path.display()))?;
        t.validate()
            .with_context(|| format!("task file {}", path.display()))?;
        Ok(t)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.model.starts_with("torchscript:") {
            self.model.parse::<ModelSpec>()?;
        }
        if self.batch_size < 1 {
            bail!("batch_size must be at least 1");
        }
        if self.steps == 0
            || self.checkpoint_interval == 0
            || !self.steps.is_multiple_of(self.checkpoint_interval)
        {
            bail!(
                "checkpoint_interval must be positive and divide steps ({})",
                self.steps
            );
        }
        if self.holdout_per_mille >= 1000 {
            bail!("holdout_per_mille must be below 1000");
        }
        if !(1..=256).contains(&self.cpu_threads) {
            bail!("cpu_threads must be between 1 and 256");
        }
        if self.replay_tolerance == 0.0 && self.optimizer_tolerance.is_some_and(|t| t > 0.0) {
            bail!(
                "replay_tolerance 0 demands bit-identical replays; set optimizer_tolerance to 0 \
                 too, or give both a tolerance"
            );
        }
        for (name, t) in [
            ("replay_tolerance", Some(self.replay_tolerance)),
            ("optimizer_tolerance", self.optimizer_tolerance),
        ] {
            if t.is_some_and(|t| !t.is_finite() || t < 0.0) {
                bail!("{name} must be 0 or a positive number");
            }
        }
        Ok(())
    }

    /// The intra-op thread count to train or replay with, given the one asked for: a task
    /// that demands bit-identical replays fixes it (asking for another is refused, since its
    /// checkpoints would not replay); a task with a tolerance takes what is asked, or 1.
    pub fn threads(&self, asked: Option<i32>) -> anyhow::Result<i32> {
        match asked {
            Some(n) if n < 1 => bail!("--threads must be at least 1"),
            Some(n) if self.tolerance().is_exact() && n != self.cpu_threads => bail!(
                "this task demands bit-identical replays with cpu_threads: {}; training or \
                 replaying with {n} threads would sum in another order",
                self.cpu_threads
            ),
            Some(n) => Ok(n),
            None if self.tolerance().is_exact() => Ok(self.cpu_threads),
            None => Ok(1),
        }
    }

    /// How far each tensor of a replay may be from the committed checkpoint.
    pub fn tolerance(&self) -> crate::verify::Tolerance {
        crate::verify::Tolerance {
            parameters: self.replay_tolerance,
            optimizer: self
                .optimizer_tolerance
                .unwrap_or(30.0 * self.replay_tolerance),
        }
    }

    /// The run spec for `miner` with `salt`, training on `device` (fetching a TorchScript model
    /// through `cache`).
    pub fn run_spec(
        &self,
        miner: &Address,
        salt: &Hash,
        device: tch::Device,
        cache: &Cache,
    ) -> anyhow::Result<RunSpec> {
        let optimizer = match self.optimizer {
            OptimizerFile::Sgd {
                lr,
                momentum,
                weight_decay,
            } => OptimizerConfig {
                kind: OptimizerKind::Sgd { momentum },
                lr,
                weight_decay,
            },
            OptimizerFile::Adamw {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => OptimizerConfig {
                kind: OptimizerKind::AdamW { beta1, beta2, eps },
                lr,
                weight_decay,
            },
        };
        Ok(RunSpec {
            loss: match self.loss {
                LossFile::CrossEntropy => Loss::CrossEntropy,
                LossFile::Mse => Loss::Mse,
            },
            model: ModelSpec::resolve(&self.model, cache)?,
            optimizer,
            batch_size: self.batch_size,
            steps: self.steps,
            checkpoint_interval: self.checkpoint_interval,
            run_seed: pot_protocol::tx::run_seed(self.seed, miner, salt),
            device,
        })
    }

    /// The dataset, fetched and checked, split into `(train, held_out)`.
    pub fn load_data(&self, cache: &Cache) -> anyhow::Result<(Dataset, Dataset)> {
        let d = &self.dataset;
        let bytes = fetch(&d.locator, &d.sha256, cache)?;
        let builtin = d
            .locator
            .strip_prefix("builtin:")
            .and_then(datasets::builtin);
        let mut data = if let Some(b) = builtin {
            b.load()
        } else {
            let mut data = match d.format.as_str() {
                "csv" => datasets::from_csv(&bytes)?,
                "safetensors" => datasets::from_safetensors(&bytes)?,
                "idx" => {
                    let Some(labels) = &d.labels else {
                        bail!(
                            "dataset format idx needs `labels: {{locator, sha256}}` for the labels file"
                        );
                    };
                    let label_bytes = fetch(&labels.locator, &labels.sha256, cache)?;
                    datasets::from_idx(&bytes, &label_bytes)?
                }
                other => bail!("dataset format {other:?} is not csv, safetensors or idx"),
            };
            if d.feature_scale != 1.0 {
                data.x *= d.feature_scale;
            }
            data
        };
        if let Some(image) = d.image {
            if image.iter().product::<i64>() != data.features() {
                bail!(
                    "dataset image shape {image:?} does not match its {} features",
                    data.features()
                );
            }
            data.image = Some(image);
        }
        Ok(datasets::split(&data, self.holdout_per_mille, self.seed))
    }
}
