//! `TrainingTask`: one task submitted to a network, and its life on chain.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{NetworkRef, SecretKeyRef};

/// A training task: the operator signs it with the publisher's key, submits it with its bounty
/// escrowed, reveals the eval set when the claims are in, and mirrors the task's life on chain
/// into the status.
// Printer columns repeat `type_` and `priority`, which this lint takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "pot.dev",
    version = "v1alpha1",
    kind = "TrainingTask",
    namespaced,
    status = "TrainingTaskStatus",
    shortname = "tt",
    category = "pot",
    doc = "A PoT training task: what to train, the bounty, and how the work is checked.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Network",
        type_ = "string",
        json_path = ".spec.networkRef.name"
    ),
    printcolumn(name = "Claims", type_ = "integer", json_path = ".status.claimCount"),
    printcolumn(
        name = "Metric",
        type_ = "number",
        json_path = ".status.winnerMetric",
        description = "the winning claim's metric on the eval set"
    ),
    printcolumn(
        name = "Bounty",
        type_ = "integer",
        json_path = ".spec.bounty",
        priority = 1
    ),
    printcolumn(
        name = "Task",
        type_ = "string",
        json_path = ".status.taskId",
        priority = 1
    ),
    printcolumn(
        name = "Winner",
        type_ = "string",
        json_path = ".status.winner",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingTaskSpec {
    /// The network the task is submitted to.
    #[x_kube(validation = Rule::new("self == oldSelf").message("networkRef is immutable"))]
    pub network_ref: NetworkRef,
    /// The Secret holding the publisher's key, which pays the bounty and fees.
    #[x_kube(validation = Rule::new("self == oldSelf").message("publisherKeySecret is immutable"))]
    pub publisher_key_secret: SecretKeyRef,
    /// What to train and how validators check it.
    #[x_kube(validation = Rule::new("self == oldSelf").message("task is immutable once submitted: delete this TrainingTask and create another"))]
    pub task: TaskDefinition,
    /// Tokens escrowed and paid to the winner (less the validators' share).
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("bounty is immutable: it is escrowed on chain"))]
    pub bounty: u64,
    /// The held-out set that decides the metric; only its hash is published until the claims
    /// are in.
    #[x_kube(validation = Rule::new("self == oldSelf").message("evalSet is immutable: its hash is committed on chain"))]
    pub eval_set: Dataset,
    /// Phase lengths, in blocks.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("windows are immutable once submitted"))]
    pub windows: Windows,
    /// Seconds after creation when a task that has not finalized is marked `Expired` (the
    /// chain still runs it to its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
}

/// The task, as `pot-node task submit` takes it (`node-image/node/tasks/*.yaml`), in this API's
/// spelling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.checkpointInterval > 0 && self.steps % self.checkpointInterval == 0").message("checkpointInterval must divide steps"))]
pub struct TaskDefinition {
    pub model: Model,
    pub dataset: Dataset,
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub loss: Loss,
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: u32,
    /// Training steps of every claim.
    #[schemars(range(min = 1))]
    pub steps: u64,
    /// A checkpoint every this many steps.
    #[schemars(range(min = 1))]
    pub checkpoint_interval: u64,
    /// The task seed; each run's seed is derived from it, the miner and the claim's salt.
    #[serde(default)]
    pub seed: u64,
    /// Part of the dataset held out from training for a miner's own evaluation.
    #[serde(default = "one_fifth")]
    #[schemars(range(min = 0.0, max = 0.9))]
    pub holdout_fraction: f64,
    #[serde(default)]
    pub metric: Metric,
    #[serde(default)]
    pub verification: Verification,
}

fn one_fifth() -> f64 {
    0.2
}

/// A built-in architecture, or a TorchScript module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.builtin) != has(self.torchScript)").message("model: give exactly one of builtin and torchScript"))]
#[x_kube(validation = Rule::new("!has(self.hidden) || (has(self.builtin) && self.builtin == 'mlp')").message("model.hidden applies to the mlp model only"))]
#[x_kube(validation = Rule::new("!has(self.builtin) || self.builtin != 'mlp' || has(self.hidden)").message("model: mlp needs its hidden layer widths (hidden: [128, 64])"))]
pub struct Model {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinModel>,
    /// Hidden layer widths of `mlp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub hidden: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_script: Option<TorchScript>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum BuiltinModel {
    #[serde(rename = "logistic")]
    Logistic,
    #[serde(rename = "mlp")]
    Mlp,
    #[serde(rename = "lenet5")]
    Lenet5,
    #[serde(rename = "resnet-small")]
    ResnetSmall,
}

/// A TorchScript module (`torch.jit.save`) with `forward` and trainable parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.url)").message("torchScript: give exactly one of configMap and url"))]
pub struct TorchScript {
    /// A key of a ConfigMap (in `binaryData`) of the task's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKey>,
    /// An `http(s)://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^https?://.+$"))]
    pub url: Option<String>,
    /// SHA-256 of the module's bytes.
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConfigMapKey {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A dataset: where its bytes are, their SHA-256, and how to read them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.format == 'idx') == has(self.labels)").message("an idx dataset needs its labels file, and only an idx dataset has one"))]
pub struct Dataset {
    /// `builtin:NAME`, an `http(s)://` URL, or `pot://<sha256>` (served by the network).
    #[schemars(regex(pattern = "^(builtin:[a-z0-9-]+|https?://.+|pot://[0-9a-f]{64})$"))]
    pub locator: String,
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: String,
    #[serde(default)]
    pub format: DataFormat,
    /// The labels file of an `idx` dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Blob>,
    /// Divide every feature by this (255 for raw pixels).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub feature_divisor: u32,
    /// The image shape when the features are flattened images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageShape>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Blob {
    #[schemars(regex(pattern = "^(https?://.+|pot://[0-9a-f]{64})$"))]
    pub locator: String,
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImageShape {
    #[schemars(range(min = 1, max = 64))]
    pub channels: u32,
    #[schemars(range(min = 1, max = 4096))]
    pub height: u32,
    #[schemars(range(min = 1, max = 4096))]
    pub width: u32,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// One example a line: the label, then the features.
    #[default]
    Csv,
    /// Tensors `x` (features) and `y` (labels).
    Safetensors,
    /// MNIST's IDX (images here, labels in `labels`).
    Idx,
}

/// The optimizer and its hyper-parameters, each fixed or a range miners choose from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'adamw' || (!has(self.beta1) && !has(self.beta2))").message("beta1 and beta2 apply to adamw only"))]
#[x_kube(validation = Rule::new("self.kind == 'sgd' || !has(self.momentum)").message("momentum applies to sgd only"))]
pub struct OptimizerSpec {
    pub kind: OptimizerKind,
    pub lr: HyperParameter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<HyperParameter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<HyperParameter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<HyperParameter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<HyperParameter>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum.
    Sgd,
    /// AdamW (ε = 1e-8).
    Adamw,
}

/// `{value: 0.05}`, or `{min: 0.01, max: 0.1, default: 0.05}` for miners to choose from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.value) ? !has(self.min) && !has(self.max) && !has(self.default) : has(self.min) && has(self.max) && has(self.default)").message("a hyper-parameter is either {value: x} or {min: a, max: b, default: d}"))]
#[x_kube(validation = Rule::new("has(self.value) || (self.min <= self.default && self.default <= self.max)").message("a hyper-parameter's range needs min <= default <= max"))]
pub struct HyperParameter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub default: Option<f64>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Loss {
    #[default]
    CrossEntropy,
    /// Mean squared error against one-hot targets.
    Mse,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Classification accuracy on the eval set: higher wins.
    #[default]
    Accuracy,
    /// Mean loss on the eval set: lower wins.
    Loss,
}

/// How validators check a claim.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Largest relative distance a replayed model tensor may be off by; 0 demands
    /// bit-identical replays (CPU tasks).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub replay_tolerance: f64,
    /// The same for optimizer state; 30 × `replayTolerance` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub optimizer_tolerance: Option<f64>,
    /// Segments with the largest updates each validator replays besides the sampled ones.
    #[serde(default = "three")]
    #[schemars(range(min = 0, max = 64))]
    pub top_q: u32,
    /// Sampled segments each validator replays; 0 takes the network's floor.
    #[serde(default)]
    #[schemars(range(min = 0, max = 64))]
    pub samples: u32,
    /// libtorch threads of CPU training and replay (part of a bit-identical task).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 256))]
    pub cpu_threads: u32,
}

impl Default for Verification {
    fn default() -> Self {
        Verification {
            replay_tolerance: 0.0,
            optimizer_tolerance: None,
            top_q: three(),
            samples: 0,
            cpu_threads: 1,
        }
    }
}

fn three() -> u32 {
    3
}

/// Phase lengths in blocks, each at least 1 (the network bounds them further).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Windows {
    /// Miners commit claims.
    #[serde(default = "w60")]
    #[schemars(range(min = 1))]
    pub commit: u32,
    /// Miners reveal claims.
    #[serde(default = "w10")]
    #[schemars(range(min = 1))]
    pub reveal: u32,
    /// The publisher reveals the eval set.
    #[serde(default = "w10")]
    #[schemars(range(min = 1))]
    pub eval_reveal: u32,
    /// Validators commit reports.
    #[serde(default = "w40")]
    #[schemars(range(min = 1))]
    pub report_commit: u32,
    /// Validators reveal reports.
    #[serde(default = "w10")]
    #[schemars(range(min = 1))]
    pub report_reveal: u32,
    /// Anyone may commit to a challenge of a report.
    #[serde(default = "w10")]
    #[schemars(range(min = 1))]
    pub challenge: u32,
    /// Challengers reveal.
    #[serde(default = "w5")]
    #[schemars(range(min = 1))]
    pub challenge_reveal: u32,
    /// Challenge committees commit votes.
    #[serde(default = "w10")]
    #[schemars(range(min = 1))]
    pub vote: u32,
    /// Challenge committees reveal votes.
    #[serde(default = "w5")]
    #[schemars(range(min = 1))]
    pub vote_reveal: u32,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            commit: w60(),
            reveal: w10(),
            eval_reveal: w10(),
            report_commit: w40(),
            report_reveal: w10(),
            challenge: w10(),
            challenge_reveal: w5(),
            vote: w10(),
            vote_reveal: w5(),
        }
    }
}

fn w5() -> u32 {
    5
}
fn w10() -> u32 {
    10
}
fn w40() -> u32 {
    40
}
fn w60() -> u32 {
    60
}

/// Where a task is in its life.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum TaskPhase {
    /// Not submitted yet (waiting for the network, the key, or funds).
    #[default]
    Pending,
    /// The transaction is sent; waiting for its block.
    Submitted,
    /// On chain and open for claim commitments.
    Open,
    /// Claims are being revealed.
    Training,
    /// Validators replay and report; challenges are settled.
    Validating,
    /// Paid out (or ended with no valid claim).
    Finalized,
    /// Refused on chain, or impossible to submit.
    Failed,
    /// `activeDeadlineSeconds` passed before it finalized.
    Expired,
}

/// One claim on the task, as the chain reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimStatus {
    pub miner: String,
    /// The median metric of its validators' reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
    #[serde(default)]
    pub valid_reports: u32,
    #[serde(default)]
    pub invalid_reports: u32,
    /// `valid`, `invalid`, or unset until judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Payout {
    pub address: String,
    pub amount: u64,
    /// `winner`, `validator`, `refund`, …
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingTaskStatus {
    #[serde(default)]
    pub phase: TaskPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The task's id on chain: `H(publisher ‖ nonce)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The publisher's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// The nonce the submission was signed with, recorded before it is sent, so that a retry
    /// re-sends the same transaction and never escrows twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_nonce: Option<u64>,
    /// The salt of the eval set's commitment (hex), chosen with the nonce and written with it,
    /// before the submission is sent. Not a secret from readers of this resource (the eval
    /// set is in its spec); it hides the eval set from the chain until the reveal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_salt: Option<String>,
    /// The height of the block that took the submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_height: Option<u64>,
    #[serde(default)]
    pub claim_count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner_metric: Option<f64>,
    /// SHA-256 of the winning model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// Where the winning model can be downloaded (the network's API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payouts: Vec<Payout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized_at: Option<Time>,
    /// Why the task is where it is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
