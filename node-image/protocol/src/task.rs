//! The task: what a client asks to be trained, in the one form the chain stores, the API shows,
//! a client submits and a miner trains from.
//!
//! On chain a task is the borsh encoding of [`TaskSpec`]; as a file (YAML) or in the API (JSON)
//! it is [`TaskDoc`], the same fields written as a person writes them: decimal numbers, one
//! optimizer block whose hyper-parameters are either a fixed value or a range a miner chooses
//! from, and defaults for what most tasks leave alone.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::units::Fixed;

/// Bounds that keep one task's cost to validators within reason.
pub mod limits {
    /// Examples per batch.
    pub const MAX_BATCH_SIZE: u32 = 1 << 16;
    /// Largest-update segments a validator replays besides the sampled ones.
    pub const MAX_TOP_Q: u32 = 64;
    /// Sampled segments a task may ask each validator to replay.
    pub const MAX_SAMPLES: u32 = 64;
    /// libtorch intra-op threads a task may fix.
    pub const MAX_CPU_THREADS: u32 = 256;
}

/// Which direction of a metric is better.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Classification accuracy on the eval set: higher is better.
    #[default]
    Accuracy,
    /// Mean loss on the eval set: lower is better.
    Loss,
}

impl MetricKind {
    pub fn higher_is_better(self) -> bool {
        matches!(self, MetricKind::Accuracy)
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// SGD with momentum (hyper-parameters `lr`, `momentum`, `weight_decay`).
    Sgd,
    /// AdamW (hyper-parameters `lr`, `beta1`, `beta2`, `weight_decay`; ε is 1e-8).
    AdamW,
}

impl Optimizer {
    /// The hyper-parameters this optimizer has, sorted, with the value each takes when a task
    /// does not declare it (`lr` has none: every task declares it).
    pub fn hyper_defaults(self) -> &'static [(&'static str, Option<Fixed>)] {
        match self {
            Optimizer::Sgd => &[
                ("lr", None),
                ("momentum", Some(Fixed(0))),
                ("weight_decay", Some(Fixed(0))),
            ],
            Optimizer::AdamW => &[
                ("beta1", Some(Fixed(900_000))),
                ("beta2", Some(Fixed(999_000))),
                ("lr", None),
                ("weight_decay", Some(Fixed(0))),
            ],
        }
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    #[default]
    CrossEntropy,
    /// Mean squared error against one-hot targets.
    Mse,
}

/// How a dataset's bytes are laid out.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// One example a line: the label, then the features (ignored for `builtin:` locators).
    #[default]
    Csv,
    /// Tensors `x` (float features) and `y` (integer labels).
    Safetensors,
    /// MNIST's IDX: the locator holds the images, `labels` the labels.
    Idx,
}

/// Where to get some bytes and the SHA-256 they must have.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// `builtin:NAME`, `file://PATH` or a path, `http(s)://URL`, or `pot://SHA256`.
    pub locator: String,
    pub sha256: Hash,
}

/// The largest blob (dataset, labels, model) a node downloads, and a publisher's operator
/// hashes: a bound on what a hostile locator can make either store or read.
pub const MAX_DOWNLOAD: u64 = 2 * 1024 * 1024 * 1024;

/// The SHA-256 of each dataset compiled into `pot-node` (`builtin:<name>`), so that a
/// publisher can check a task's hash before escrowing a bounty, without the bytes. `pot-node`'s
/// tests hold these equal to the bytes it ships.
pub const BUILTIN_DATASETS: &[(&str, &str)] = &[
    (
        "digits",
        "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
    ),
    (
        "mnist-5k",
        "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    ),
];

/// The SHA-256 of the built-in dataset `name`, if there is one.
pub fn builtin_dataset_sha256(name: &str) -> Option<Hash> {
    BUILTIN_DATASETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| h.parse().expect("a built-in hash is hex"))
}

/// A dataset (the training set, or an eval set): where its bytes are, their hash, and how to
/// read them.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRef {
    /// `builtin:NAME`, `file://PATH` or a path, `http(s)://URL`, or `pot://SHA256`.
    pub locator: String,
    pub sha256: Hash,
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: DataFormat,
    /// The labels file of an IDX dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BlobRef>,
    /// Divide every feature by this (255 for raw pixels).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub feature_divisor: u32,
    /// `[channels, height, width]` when the features are flattened images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<[u32; 3]>,
}

impl DatasetRef {
    /// A CSV (or built-in) dataset with nothing else to say about it.
    pub fn new(locator: impl Into<String>, sha256: Hash) -> DatasetRef {
        DatasetRef {
            locator: locator.into(),
            sha256,
            format: DataFormat::Csv,
            labels: None,
            feature_divisor: 1,
            image: None,
        }
    }

    /// Every blob this dataset is read from, with its hash.
    pub fn blobs(&self) -> Vec<BlobRef> {
        let mut v = vec![BlobRef {
            locator: self.locator.clone(),
            sha256: self.sha256,
        }];
        v.extend(self.labels.clone());
        v
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}

/// A hyper-parameter a miner may choose, the closed range it must lie in, and the value a
/// miner takes unless it searches.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct HyperRange {
    pub name: String,
    pub min: Fixed,
    pub max: Fixed,
    pub default: Fixed,
}

/// A miner's chosen value for one declared hyper-parameter.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct HyperValue {
    pub name: String,
    pub value: Fixed,
}

/// How validators check a claim.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Verification {
    /// Largest relative L2 distance `‖replayed − committed‖ / ‖committed‖` each model tensor of
    /// a replayed segment may be off by; zero (with `optimizer_tolerance` zero) demands
    /// bit-identical checkpoints (deterministic CPU runs).
    pub replay_tolerance: Fixed,
    /// The same bound for each optimizer-state tensor (momentum, Adam's moments).
    pub optimizer_tolerance: Fixed,
    /// Besides the sampled segments, replay the `top_q` with the largest parameter updates (a
    /// trajectory that jumps to a foreign model has one huge update).
    pub top_q: u32,
    /// Segments each validator replays, sampled from the beacon; the chain's
    /// `segments_per_claim` is the floor (0 asks for just that).
    pub samples: u32,
    /// libtorch intra-op threads for CPU training and replay when replays must be
    /// bit-identical (some sums split by thread, so the count is part of the task).
    pub cpu_threads: u32,
}

impl Verification {
    /// Whether replays must be bit-identical.
    pub fn is_exact(&self) -> bool {
        self.replay_tolerance == Fixed(0) && self.optimizer_tolerance == Fixed(0)
    }
}

/// What a client asks to be trained. The ledger checks its shape ([`TaskSpec::check`]); the
/// node interprets `model` and the dataset.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(try_from = "TaskDoc", into = "TaskDoc")]
pub struct TaskSpec {
    /// A model descriptor the training engine understands (`mlp:64,32`, `lenet5`,
    /// `torchscript:<locator>#<sha256>`, ...).
    pub model: String,
    pub dataset: DatasetRef,
    pub optimizer: Optimizer,
    pub loss: LossKind,
    /// Ranges for the hyper-parameters miners choose, sorted by name, names unique, each a
    /// hyper-parameter of `optimizer`.
    pub hyper: Vec<HyperRange>,
    pub batch_size: u32,
    /// Total training steps of every claim.
    pub steps: u64,
    /// A checkpoint every `checkpoint_interval` steps; must divide `steps`.
    pub checkpoint_interval: u64,
    /// The task seed; each run's seed is `H(task seed ‖ miner ‖ salt)`.
    pub seed: u64,
    /// Examples per thousand of the dataset held out from training (for a miner's own
    /// evaluation; the client's secret eval set decides the metric).
    pub holdout_per_mille: u32,
    pub metric: MetricKind,
    pub verification: Verification,
}

/// The largest hyper-parameter or tolerance a task may name (far beyond any sensible one; it
/// keeps every number of a task readable back from its decimal form).
const MAX_VALUE: Fixed = Fixed(1000 * Fixed::SCALE);

/// Why a task spec is not acceptable: the field and what is wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct SpecError {
    pub field: &'static str,
    pub why: &'static str,
}

impl TaskSpec {
    /// Number of replayable segments (checkpoints minus one).
    pub fn segments(&self) -> u64 {
        self.steps / self.checkpoint_interval.max(1)
    }

    /// The value of each declared hyper-parameter a miner takes unless it searches.
    pub fn default_hyper(&self) -> Vec<HyperValue> {
        self.hyper
            .iter()
            .map(|r| HyperValue {
                name: r.name.clone(),
                value: r.default,
            })
            .collect()
    }

    /// The value of optimizer hyper-parameter `name` in a run with the claim's `chosen`
    /// values: the chosen one if the task declares it, else the optimizer's default.
    pub fn hyper_value(&self, chosen: &[HyperValue], name: &str) -> Option<Fixed> {
        chosen
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.value)
            .or_else(|| {
                self.optimizer
                    .hyper_defaults()
                    .iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, d)| *d)
            })
    }

    /// Check `chosen` against the declared ranges: one value per range, same order, inside it.
    pub fn check_hyper(&self, chosen: &[HyperValue]) -> Result<(), String> {
        let names: Vec<&str> = self.hyper.iter().map(|r| r.name.as_str()).collect();
        let got: Vec<&str> = chosen.iter().map(|v| v.name.as_str()).collect();
        if names != got {
            return Err(format!(
                "the task declares hyper-parameters {names:?}; got {got:?}"
            ));
        }
        for (v, r) in chosen.iter().zip(&self.hyper) {
            if v.value < r.min || v.value > r.max {
                return Err(format!(
                    "{} = {} is outside the task's range {}..={}",
                    v.name, v.value, r.min, r.max
                ));
            }
        }
        Ok(())
    }

    /// Everything about the spec that does not depend on the chain's parameters. The ledger
    /// adds its own bounds (steps, sizes); the node checks the model descriptor and the data.
    pub fn check(&self) -> Result<(), SpecError> {
        let bad = |field, why| Err(SpecError { field, why });
        if self.model.is_empty() {
            return bad("model", "is empty");
        }
        check_dataset("dataset", &self.dataset)?;
        self.check_hyper_ranges()?;
        if !(1..=limits::MAX_BATCH_SIZE).contains(&self.batch_size) {
            return bad("batch_size", "must be between 1 and 65536");
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if self.checkpoint_interval == 0 || !self.steps.is_multiple_of(self.checkpoint_interval) {
            return bad("checkpoint_interval", "must be positive and divide steps");
        }
        if self.segments() > u64::from(u32::MAX) {
            return bad("checkpoint_interval", "gives more than 2^32 segments");
        }
        if self.holdout_per_mille >= 1000 {
            return bad("holdout_per_mille", "must be below 1000");
        }
        let v = &self.verification;
        if v.replay_tolerance < Fixed(0) {
            return bad("replay_tolerance", "must not be negative");
        }
        if v.optimizer_tolerance < Fixed(0) {
            return bad("optimizer_tolerance", "must not be negative");
        }
        if v.replay_tolerance > MAX_VALUE || v.optimizer_tolerance > MAX_VALUE {
            return bad("replay_tolerance", "tolerances must not exceed 1000");
        }
        if v.replay_tolerance == Fixed(0) && v.optimizer_tolerance != Fixed(0) {
            return bad(
                "optimizer_tolerance",
                "must be 0 when replay_tolerance is 0 (bit-identical replays); or give both a \
                 tolerance",
            );
        }
        if v.top_q > limits::MAX_TOP_Q {
            return bad("top_q", "must be at most 64");
        }
        if v.samples > limits::MAX_SAMPLES {
            return bad("samples", "must be at most 64");
        }
        if !(1..=limits::MAX_CPU_THREADS).contains(&v.cpu_threads) {
            return bad("cpu_threads", "must be between 1 and 256");
        }
        Ok(())
    }

    fn check_hyper_ranges(&self) -> Result<(), SpecError> {
        let bad = |field, why| Err(SpecError { field, why });
        let known = self.optimizer.hyper_defaults();
        for r in &self.hyper {
            if !known.iter().any(|(n, _)| *n == r.name) {
                return bad(
                    "hyper",
                    "names a hyper-parameter the optimizer does not have (sgd: lr, momentum, \
                     weight_decay; adamw: lr, beta1, beta2, weight_decay)",
                );
            }
            if r.min > r.max {
                return bad("hyper", "min must not exceed max");
            }
            if r.default < r.min || r.default > r.max {
                return bad("hyper", "default must lie within min..=max");
            }
            if r.min < Fixed(0) {
                return bad("hyper", "values must not be negative");
            }
            if r.name == "lr" && r.min == Fixed(0) {
                return bad("hyper", "lr must be positive");
            }
            if r.name.starts_with("beta") && r.max >= Fixed(Fixed::SCALE) {
                return bad("hyper", "beta1 and beta2 must be below 1");
            }
            if r.max > MAX_VALUE {
                return bad("hyper", "values must not exceed 1000");
            }
        }
        if !self.hyper.iter().any(|r| r.name == "lr") {
            return bad("hyper", "the learning rate lr must be declared");
        }
        if !self.hyper.windows(2).all(|w| w[0].name < w[1].name) {
            return bad("hyper", "names must be sorted and unique");
        }
        Ok(())
    }
}

/// The checks of a dataset reference that need no I/O.
pub fn check_dataset(field: &'static str, d: &DatasetRef) -> Result<(), SpecError> {
    let bad = |why| Err(SpecError { field, why });
    if d.locator.is_empty() {
        return bad("locator is empty");
    }
    match (d.format, &d.labels) {
        (DataFormat::Idx, None) => return bad("format idx needs a labels file"),
        (DataFormat::Idx, Some(l)) if l.locator.is_empty() => {
            return bad("labels locator is empty");
        }
        (DataFormat::Csv | DataFormat::Safetensors, Some(_)) => {
            return bad("labels are only for format idx");
        }
        _ => {}
    }
    let values = d.image.map(|i| {
        i.iter()
            .try_fold(1u64, |n, &x| n.checked_mul(u64::from(x)))
            .unwrap_or(u64::MAX)
    });
    if values.is_some_and(|v| v > 1 << 24) {
        return bad("image must have at most 2^24 values");
    }
    if d.feature_divisor == 0 {
        return bad("feature_divisor must be at least 1");
    }
    if d.image.is_some_and(|i| i.contains(&0)) {
        return bad("image dimensions must be positive");
    }
    Ok(())
}

// ---- The written form ----

/// A task as a person writes it (YAML) and the API shows it (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDoc {
    /// `logistic`, `mlp:W1,W2,...`, `lenet5`, `resnet-small`, or
    /// `torchscript:<locator>#<sha256>`.
    pub model: String,
    pub dataset: DatasetRef,
    pub optimizer: OptimizerDoc,
    #[serde(default)]
    pub loss: LossKind,
    pub batch_size: u32,
    pub steps: u64,
    pub checkpoint_interval: u64,
    pub seed: u64,
    #[serde(default = "default_holdout")]
    pub holdout_per_mille: u32,
    #[serde(default)]
    pub metric: MetricKind,
    #[serde(default)]
    pub replay_tolerance: Fixed,
    /// By default thirty times `replay_tolerance`: honest replays on this project's benchmark
    /// CPU drift 10–15 times further in optimizer state than in parameters (BENCHMARKS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_tolerance: Option<Fixed>,
    #[serde(default = "default_top_q")]
    pub top_q: u32,
    #[serde(default)]
    pub samples: u32,
    #[serde(default = "default_cpu_threads")]
    pub cpu_threads: u32,
}

fn default_holdout() -> u32 {
    200
}
fn default_top_q() -> u32 {
    3
}
fn default_cpu_threads() -> u32 {
    1
}

/// The optimizer and its hyper-parameters, each a fixed value or a range to choose from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerDoc {
    Sgd {
        lr: HyperDoc,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        momentum: Option<HyperDoc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight_decay: Option<HyperDoc>,
    },
    Adamw {
        lr: HyperDoc,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta1: Option<HyperDoc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta2: Option<HyperDoc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight_decay: Option<HyperDoc>,
    },
}

/// One hyper-parameter: `0.05`, or `{min: 0.01, max: 0.1, default: 0.05}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HyperDoc {
    Value(Fixed),
    Range {
        min: Fixed,
        max: Fixed,
        default: Fixed,
    },
}

/// The range form, on its own so that its errors name its fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeDoc {
    min: Fixed,
    max: Fixed,
    default: Fixed,
}

/// By hand rather than `untagged`, whose one error ("did not match any variant") would hide
/// what is wrong with the number or the range.
impl<'de> Deserialize<'de> for HyperDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HyperDoc, D::Error> {
        use serde::de::{IntoDeserializer, MapAccess, Visitor, value::MapAccessDeserializer};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HyperDoc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, or {min, max, default}")
            }
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<HyperDoc, E> {
                <Fixed as Deserialize>::deserialize(x.into_deserializer()).map(HyperDoc::Value)
            }
            fn visit_i64<E: serde::de::Error>(self, x: i64) -> Result<HyperDoc, E> {
                <Fixed as Deserialize>::deserialize(x.into_deserializer()).map(HyperDoc::Value)
            }
            fn visit_u64<E: serde::de::Error>(self, x: u64) -> Result<HyperDoc, E> {
                <Fixed as Deserialize>::deserialize(x.into_deserializer()).map(HyperDoc::Value)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HyperDoc, E> {
                <Fixed as Deserialize>::deserialize(s.into_deserializer()).map(HyperDoc::Value)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HyperDoc, A::Error> {
                let r = <RangeDoc as Deserialize>::deserialize(MapAccessDeserializer::new(map))?;
                Ok(HyperDoc::Range {
                    min: r.min,
                    max: r.max,
                    default: r.default,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl HyperDoc {
    fn range(self, name: &str) -> HyperRange {
        let (min, max, default) = match self {
            HyperDoc::Value(v) => (v, v, v),
            HyperDoc::Range { min, max, default } => (min, max, default),
        };
        HyperRange {
            name: name.into(),
            min,
            max,
            default,
        }
    }

    fn of(r: &HyperRange) -> HyperDoc {
        if r.min == r.max && r.min == r.default {
            HyperDoc::Value(r.min)
        } else {
            HyperDoc::Range {
                min: r.min,
                max: r.max,
                default: r.default,
            }
        }
    }
}

impl TryFrom<TaskDoc> for TaskSpec {
    type Error = SpecError;

    fn try_from(d: TaskDoc) -> Result<TaskSpec, SpecError> {
        let (optimizer, named) = match d.optimizer {
            OptimizerDoc::Sgd {
                lr,
                momentum,
                weight_decay,
            } => (
                Optimizer::Sgd,
                vec![
                    ("lr", Some(lr)),
                    ("momentum", momentum),
                    ("weight_decay", weight_decay),
                ],
            ),
            OptimizerDoc::Adamw {
                lr,
                beta1,
                beta2,
                weight_decay,
            } => (
                Optimizer::AdamW,
                vec![
                    ("beta1", beta1),
                    ("beta2", beta2),
                    ("lr", Some(lr)),
                    ("weight_decay", weight_decay),
                ],
            ),
        };
        let mut hyper: Vec<HyperRange> = named
            .into_iter()
            .filter_map(|(n, h)| h.map(|h| h.range(n)))
            .collect();
        hyper.sort_by(|a, b| a.name.cmp(&b.name));
        let optimizer_tolerance = d
            .optimizer_tolerance
            .unwrap_or(Fixed(d.replay_tolerance.0.saturating_mul(30)));
        let spec = TaskSpec {
            model: d.model,
            dataset: d.dataset,
            optimizer,
            loss: d.loss,
            hyper,
            batch_size: d.batch_size,
            steps: d.steps,
            checkpoint_interval: d.checkpoint_interval,
            seed: d.seed,
            holdout_per_mille: d.holdout_per_mille,
            metric: d.metric,
            verification: Verification {
                replay_tolerance: d.replay_tolerance,
                optimizer_tolerance,
                top_q: d.top_q,
                samples: d.samples,
                cpu_threads: d.cpu_threads,
            },
        };
        spec.check()?;
        Ok(spec)
    }
}

impl From<TaskSpec> for TaskDoc {
    fn from(s: TaskSpec) -> TaskDoc {
        let get = |name: &str| s.hyper.iter().find(|r| r.name == name).map(HyperDoc::of);
        // Every task declares lr (`check`); a spec built by hand without it shows lr 0.
        let lr = get("lr").unwrap_or(HyperDoc::Value(Fixed(0)));
        let optimizer = match s.optimizer {
            Optimizer::Sgd => OptimizerDoc::Sgd {
                lr,
                momentum: get("momentum"),
                weight_decay: get("weight_decay"),
            },
            Optimizer::AdamW => OptimizerDoc::Adamw {
                lr,
                beta1: get("beta1"),
                beta2: get("beta2"),
                weight_decay: get("weight_decay"),
            },
        };
        let v = s.verification;
        TaskDoc {
            model: s.model,
            dataset: s.dataset,
            optimizer,
            loss: s.loss,
            batch_size: s.batch_size,
            steps: s.steps,
            checkpoint_interval: s.checkpoint_interval,
            seed: s.seed,
            holdout_per_mille: s.holdout_per_mille,
            metric: s.metric,
            replay_tolerance: v.replay_tolerance,
            optimizer_tolerance: Some(v.optimizer_tolerance),
            top_q: v.top_q,
            samples: v.samples,
            cpu_threads: v.cpu_threads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SGD_TASK: &str = r#"{
        "model": "mlp:128,64",
        "dataset": {"locator": "builtin:digits", "sha256": "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"},
        "optimizer": {"kind": "sgd", "lr": {"min": 0.01, "max": 0.1, "default": 0.05}, "momentum": 0.9},
        "batch_size": 64, "steps": 2000, "checkpoint_interval": 50, "seed": 7
    }"#;

    fn spec() -> TaskSpec {
        serde_json::from_str(SGD_TASK).unwrap()
    }

    #[test]
    fn a_written_task_becomes_the_on_chain_spec_with_defaults() {
        let s = spec();
        assert_eq!(s.optimizer, Optimizer::Sgd);
        assert_eq!(
            s.hyper,
            vec![
                HyperRange {
                    name: "lr".into(),
                    min: Fixed(10_000),
                    max: Fixed(100_000),
                    default: Fixed(50_000)
                },
                HyperRange {
                    name: "momentum".into(),
                    min: Fixed(900_000),
                    max: Fixed(900_000),
                    default: Fixed(900_000)
                },
            ]
        );
        assert_eq!(s.holdout_per_mille, 200);
        assert_eq!(s.metric, MetricKind::Accuracy);
        assert!(s.verification.is_exact());
        assert_eq!(s.verification.top_q, 3);
        assert_eq!(s.verification.cpu_threads, 1);
        // Undeclared hyper-parameters take the optimizer's default.
        let chosen = s.default_hyper();
        assert_eq!(s.hyper_value(&chosen, "lr"), Some(Fixed(50_000)));
        assert_eq!(s.hyper_value(&chosen, "weight_decay"), Some(Fixed(0)));
    }

    #[test]
    fn the_written_form_round_trips() {
        let s = spec();
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"lr\":{\"min\":0.01,\"max\":0.1,\"default\":0.05}"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<TaskSpec>(&json).unwrap(), s);
        let bytes = borsh::to_vec(&s).unwrap();
        assert_eq!(borsh::from_slice::<TaskSpec>(&bytes).unwrap(), s);
    }

    #[test]
    fn the_optimizer_tolerance_defaults_to_thirty_times_the_parameter_one() {
        let t = SGD_TASK.replace("\"seed\": 7", "\"seed\": 7, \"replay_tolerance\": 0.0001");
        let s: TaskSpec = serde_json::from_str(&t).unwrap();
        assert_eq!(s.verification.optimizer_tolerance, Fixed(3_000));
        assert!(!s.verification.is_exact());
    }

    #[test]
    fn a_bad_task_is_refused_naming_the_field() {
        let refuse = |from: &str, to: &str, says: &str| {
            let t = SGD_TASK.replace(from, to);
            assert_ne!(t, SGD_TASK, "{from} not in the task");
            let err = serde_json::from_str::<TaskSpec>(&t)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{to}: {err}");
        };
        refuse("\"batch_size\": 64", "\"batch_size\": 0", "batch_size");
        refuse(
            "\"checkpoint_interval\": 50",
            "\"checkpoint_interval\": 7",
            "divide steps",
        );
        refuse(
            "\"momentum\": 0.9",
            "\"beta1\": 0.9",
            "unknown field `beta1`",
        );
        refuse(
            "\"default\": 0.05",
            "\"default\": 0.5",
            "default must lie within",
        );
        refuse(
            "\"momentum\": 0.9",
            "\"momentum\": -0.9",
            "must not be negative",
        );
        refuse(
            "\"seed\": 7",
            "\"seed\": 7, \"colour\": 1",
            "unknown field `colour`",
        );
        refuse(
            "\"momentum\": 0.9",
            "\"momentum\": 0.000000001",
            "six decimal places",
        );
        refuse(
            "\"seed\": 7",
            "\"seed\": 7, \"optimizer_tolerance\": 0.1",
            "must be 0 when replay_tolerance is 0",
        );
        refuse("\"seed\": 7", "\"seed\": 7, \"top_q\": 1000", "top_q");
        refuse(
            "\"sha256\": \"09f6",
            "\"format\": \"idx\", \"sha256\": \"09f6",
            "needs a labels file",
        );
    }

    fn value() -> impl proptest::strategy::Strategy<Value = i64> {
        use proptest::prelude::*;
        prop_oneof![0i64..2_000_000_000, any::<i64>()]
    }

    proptest::proptest! {
        /// Whatever the checks let onto the chain, every client can read back from the API.
        #[test]
        fn every_spec_the_checks_accept_reads_back_from_its_json(
            adam in proptest::prelude::any::<bool>(),
            hyper in proptest::collection::vec((value(), value(), value()), 4),
            tolerances in (value(), value()),
            counts in proptest::prelude::any::<(u16, u16, u16, u32, u16)>(),
            image in proptest::option::of(proptest::prelude::any::<[u32; 3]>()),
        ) {
            let mut s = spec();
            s.optimizer = if adam { Optimizer::AdamW } else { Optimizer::Sgd };
            s.hyper = s
                .optimizer
                .hyper_defaults()
                .iter()
                .zip(hyper)
                .map(|((name, _), (a, b, c))| {
                    let mut v = [a, b, c];
                    v.sort();
                    HyperRange { name: (*name).into(), min: Fixed(v[0]), default: Fixed(v[1]), max: Fixed(v[2]) }
                })
                .collect();
            s.verification.replay_tolerance = Fixed(tolerances.0);
            s.verification.optimizer_tolerance = Fixed(tolerances.1);
            s.verification.top_q = u32::from(counts.0 % 100);
            s.verification.samples = u32::from(counts.1 % 100);
            s.verification.cpu_threads = u32::from(counts.2 % 300);
            s.batch_size = counts.3 % 70_000;
            s.holdout_per_mille = u32::from(counts.4 % 1100);
            s.dataset.image = image;
            if s.check().is_ok() {
                let json = serde_json::to_string(&s).unwrap();
                proptest::prop_assert_eq!(serde_json::from_str::<TaskSpec>(&json).unwrap(), s);
            }
        }
    }

    #[test]
    fn chosen_hyper_parameters_must_match_the_ranges() {
        let s = spec();
        let mut chosen = s.default_hyper();
        assert!(s.check_hyper(&chosen).is_ok());
        chosen[0].value = Fixed(200_000);
        assert!(s.check_hyper(&chosen).unwrap_err().contains("outside"));
        chosen.pop();
        assert!(s.check_hyper(&chosen).unwrap_err().contains("declares"));
    }
}
