//! `Miner`: a fleet of miner pods of one network, scaled by its open-task queue.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::network::PullPolicy;
use super::{NetworkRef, SecretKeyRef, Storage};

/// A fleet of miners: a StatefulSet whose pods train open tasks (on `gpusPerPod` GPUs each),
/// validate others' claims unless told not to, and keep their key and bonds across restarts.
/// With `role: Validator` the pods only validate: a network needs validators that hold no
/// claim on a task (a miner never judges a task it competes for).
// Printer columns repeat `type_` and `priority`, which this lint takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "pot.dev",
    version = "v1alpha1",
    kind = "Miner",
    namespaced,
    status = "MinerStatus",
    shortname = "mnr",
    category = "pot",
    doc = "A fleet of PoT miners of one network, scaled with its open-task queue.",
    validation = Rule::new("self.metadata.name.size() <= 40").message("a Miner's name is at most 40 characters (its objects' names add up to 23 more)"),
    validation = Rule::new("!has(self.spec.role) || self.spec.role != 'Validator' || !has(self.spec.stake)").message("stake is a miner's bond: a Validator fleet bonds validatorStake"),
    validation = Rule::new("!has(self.spec.role) || self.spec.role != 'Validator' || !has(self.spec.validate) || self.spec.validate").message("a Validator fleet must validate (validate: false leaves it nothing to do)"),
    validation = Rule::new("!has(self.spec.role) || self.spec.role != 'Validator' || !has(self.spec.autoscaling)").message("a Validator fleet does not autoscale: the task queue says how many miners are needed, not validators (its assignments come as the queue empties); set replicas"),
    validation = Rule::new("!has(self.spec.validatorStake) || !has(self.spec.validate) || self.spec.validate").message("validatorStake bonds validator stake, which a fleet with validate: false never uses"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Network",
        type_ = "string",
        json_path = ".spec.networkRef.name"
    ),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpus"),
    printcolumn(
        name = "Training",
        type_ = "integer",
        json_path = ".status.tasksInProgress",
        description = "tasks the fleet holds unfinished work for"
    ),
    printcolumn(name = "Won", type_ = "integer", json_path = ".status.tasksWon"),
    printcolumn(
        name = "Holdings",
        type_ = "integer",
        json_path = ".status.holdings",
        priority = 1
    ),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".status.openTasks",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MinerSpec {
    /// The network these miners work for; cannot change (a miner's bonds live on its chain).
    #[x_kube(validation = Rule::new("self == oldSelf").message("networkRef is immutable: a miner's key and bonds belong to one chain"))]
    pub network_ref: NetworkRef,
    /// `Miner`: train open tasks (and validate, unless `validate: false`). `Validator`: only
    /// check the claims the chain assigns to the fleet's pods.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("role is immutable: a pod's bonds are for the role it was funded for"))]
    pub role: FleetRole,
    /// Pods when `autoscaling` is unset (`kubectl scale`, an HPA or KEDA set it through the
    /// scale subresource); ignored while `autoscaling` is set.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// GPUs each pod requests (`nvidia.com/gpu`); 0 for a CPU miner.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus_per_pod: i32,
    /// The node image; the network's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory of each pod (the GPUs come from `gpusPerPod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// A RuntimeClass such as `nvidia` where the GPU runtime is not the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// Each pod's volume (blob store, runs, committed salts).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage cannot change: a StatefulSet's volume claims are fixed when it is created"))]
    pub storage: Storage,
    /// Tokens each miner bonds; the network's `minMinerBond` when unset. A miner also keeps a
    /// claim deposit and fees per task it takes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub stake: Option<u64>,
    /// Tokens each pod keeps bonded as a validator while it validates, bonded by the pod from
    /// its balance (and paid by `funding`). Unset: the network's `minValidatorBond` for a
    /// `Validator` fleet, nothing for miners. Each claim it is assigned locks
    /// `max(ceil(bounty / quorum), minValidatorBond)` of it until the task ends (quorum:
    /// `validatorsPerClaim / 2 + 1`), so it checks only tasks whose bounty its stake covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub validator_stake: Option<u64>,
    /// Where each miner's stake and fees come from: the operator transfers from this key until
    /// a miner holds them. Unset: fund the addresses in `status.addresses` yourself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funding: Option<Funding>,
    /// Tasks each pod trains at once; one per GPU (or 1 on CPU) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub slots: Option<u32>,
    /// How each miner picks its hyper-parameters inside a task's ranges.
    #[serde(default)]
    pub hyper_search: HyperSearch,
    /// Miners also validate others' claims (and earn the validators' share); false: they only
    /// train. A `Validator` fleet always validates.
    #[serde(default = "yes")]
    pub validate: bool,
    /// Scale the fleet with the network's open tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// What a fleet's pods do.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum FleetRole {
    /// Train open tasks, commit and reveal claims.
    #[default]
    Miner,
    /// Check assigned claims (replay sampled segments, evaluate) and report.
    Validator,
}

impl MinerSpec {
    /// Whether the pods train.
    pub fn mines(&self) -> bool {
        self.role == FleetRole::Miner
    }

    /// Whether the pods validate.
    pub fn validates(&self) -> bool {
        self.role == FleetRole::Validator || self.validate
    }
}

fn one() -> i32 {
    1
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Funding {
    /// The paying key's Secret.
    pub from_secret: SecretKeyRef,
    /// A pod the chain has penalised more than this many times in its key's life (claims
    /// rejected, assignments left unreported) is not topped up again: a broken or dishonest
    /// pod would otherwise lose its bond over and over at the paying key's expense. The
    /// `Funded` condition names the pods it holds back; raise this to fund them again.
    #[serde(default = "default_max_penalties")]
    pub max_penalties: u64,
}

fn default_max_penalties() -> u64 {
    10
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum HyperSearch {
    /// Each range's default.
    #[default]
    Defaults,
    /// A draw inside each range, from the claim's secret salt.
    Random,
}

/// `desired = clamp(ceil(open tasks / targetOpenTasksPerMiner), minReplicas, maxReplicas)`,
/// up at once, down only once a lower count held for the stabilization window, and never by
/// removing a miner that holds unfinished work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
pub struct Autoscaling {
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Open tasks one miner is expected to take on.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_open_tasks_per_miner: i32,
    /// How long a lower replica count must be recommended before the fleet shrinks.
    #[serde(default = "five_minutes")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i32,
}

fn five_minutes() -> i32 {
    300
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods the StatefulSet has (the scale subresource's status).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods the autoscaler (or `spec.replicas`) asks for.
    #[serde(default)]
    pub desired_replicas: i32,
    /// The pods' label selector (for the scale subresource, HPA and KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// GPUs the ready pods hold.
    #[serde(default)]
    pub gpus: i32,
    /// The network's open tasks when last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_tasks: Option<u64>,
    /// Tasks the fleet holds unfinished work for (training, trained or committed).
    #[serde(default)]
    pub tasks_in_progress: u32,
    /// Tasks the fleet's miners won.
    #[serde(default)]
    pub tasks_won: u64,
    /// Tokens the fleet's pods hold: balances and bonds, as the chain last said.
    #[serde(default)]
    pub holdings: u64,
    /// Each pod's account address, by ordinal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Pods being drained before a scale-down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
