//! `PotNetwork`: a PoT chain's coordinators and the genesis they start from.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{Storage, default_image};

/// A PoT network: its coordinators (a StatefulSet with a volume each), their keys (Secrets
/// generated once and kept), the genesis (a ConfigMap) and the Services miners and clients
/// reach them through.
// Printer columns repeat `type_` and `priority`, which this lint takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "pot.dev",
    version = "v1alpha1",
    kind = "PotNetwork",
    namespaced,
    status = "PotNetworkStatus",
    shortname = "pn",
    category = "pot",
    doc = "A PoT network: coordinators that agree on a BFT ledger, their keys and genesis.",
    validation = Rule::new("self.metadata.name.size() <= 40").message("a PotNetwork's name is at most 40 characters (its objects' names add up to 23 more)"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "ready coordinators / coordinators"
    ),
    printcolumn(name = "Height", type_ = "integer", json_path = ".status.height"),
    printcolumn(
        name = "Open tasks",
        type_ = "integer",
        json_path = ".status.openTasks"
    ),
    printcolumn(
        name = "Chain",
        type_ = "string",
        json_path = ".status.chainId",
        priority = 1
    ),
    printcolumn(
        name = "Last block",
        type_ = "date",
        json_path = ".status.lastBlockTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PotNetworkSpec {
    /// Coordinators: 1 for a development network, else at least 4 (BFT tolerates f faulty
    /// coordinators out of 3f + 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self == 1 || self >= 4").message("coordinators must be 1 (a development network) or at least 4 (3f + 1 tolerates f faulty ones)"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("coordinators cannot change: the coordinator set is fixed in the genesis"))]
    pub coordinators: i32,
    /// The node image of the coordinators (and the default of the network's miners).
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; Kubernetes' default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory of each coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Each coordinator's volume (chain database, consensus WAL, signing record).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage cannot change: a StatefulSet's volume claims are fixed when it is created"))]
    pub storage: Storage,
    /// The chain's rules and starting balances; fixed once the network is created.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("genesis cannot change once the network exists: its hash names the chain"))]
    pub genesis: GenesisSpec,
    /// Ports every pod of the network listens on.
    #[serde(default)]
    pub ports: Ports,
    /// Stop the coordinators (replicas 0), keeping their volumes, keys and genesis.
    #[serde(default)]
    pub suspend: bool,
}

fn one() -> i32 {
    1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The chain's parameters. Anything unset takes the ledger's default
/// (`pot_protocol::genesis::Params::default()`); fractions are decimals in [0, 1].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.mintRate) ? self.mintRate : 0.04) <= (has(self.taskBurn) ? self.taskBurn : 0.05)").message("mintRate must not exceed taskBurn: a task may not mint more than it burned, or posting and winning one's own tasks would pay"))]
#[x_kube(validation = Rule::new("!has(self.minWindow) || !has(self.maxWindow) || self.minWindow <= self.maxWindow").message("minWindow must not exceed maxWindow"))]
#[x_kube(validation = Rule::new("!has(self.minSteps) || !has(self.maxSteps) || self.minSteps <= self.maxSteps").message("minSteps must not exceed maxSteps"))]
pub struct GenesisSpec {
    /// The chain id (`[a-z0-9-]`); `<namespace>-<name>` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[a-z0-9-]{1,64}$"))]
    pub chain_id: Option<String>,
    /// Target time between blocks, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 60000))]
    pub block_time_ms: Option<u64>,
    /// Blocks an unbonding waits before the funds return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbonding_blocks: Option<u64>,
    /// Shortest and longest phase window a task may ask for, in blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_window: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_window: Option<u32>,
    /// The least fee a transaction pays (burned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_fee: Option<u64>,
    /// Part of a bounty burned when its task is submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub task_burn: Option<f64>,
    /// The mining reward: new supply paid to a task's winner, as a part of the bounty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub mint_rate: Option<f64>,
    /// Most new supply the tasks finalized in one block may mint together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mint_per_block: Option<u64>,
    /// Part of a bounty paid to the validators whose reports matched the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub validator_share: Option<f64>,
    /// Part of an assignment's collateral a validator that never reports loses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub validator_slash: Option<f64>,
    /// Part of a disputed validator's loss paid to the challenger who proved it wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.999999))]
    pub challenger_reward: Option<f64>,
    /// Part of a challenge's deposit shared by the committee members who voted with the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub committee_reward: Option<f64>,
    /// Deposit of a challenge (doubles with each challenge a task already has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge_deposit: Option<u64>,
    /// Least deposit escrowed with a claim commitment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_deposit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_miner_bond: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_validator_bond: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_bounty: Option<u64>,
    /// Shortest and longest training run a task may ask for, in steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_steps: Option<u64>,
    /// Validators assigned to each claim (also a challenge committee's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub validators_per_claim: Option<u32>,
    /// Segments each validator replays per claim, at least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub segments_per_claim: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_claims_per_task: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 32))]
    pub max_challenges_per_task: Option<u32>,
    /// Accounts funded at genesis, each address once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["address"]))]
    pub balances: Vec<GenesisBalance>,
    /// A key the operator generates (Secret `<network>-faucet`) and funds at genesis with this
    /// balance, to pay miners' stakes and test tasks on a development network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faucet: Option<Faucet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GenesisBalance {
    /// An account address: 64 lower-case hex digits (`pot-node keygen` prints it).
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub address: String,
    #[schemars(range(min = 1))]
    pub amount: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Faucet {
    #[schemars(range(min = 1))]
    pub balance: u64,
}

/// Ports of the network's pods (the same in every pod).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[self.p2p, self.api, self.artifacts, self.gossip].all(p, [self.p2p, self.api, self.artifacts, self.gossip].filter(q, q == p).size() == 1)").message("ports must be four different numbers"))]
pub struct Ports {
    /// Consensus between coordinators (libp2p).
    #[serde(default = "p2p_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub p2p: i32,
    /// The HTTP API, probes and metrics.
    #[serde(default = "api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub api: i32,
    /// The artifact swarm: checkpoints, models and datasets (libp2p).
    #[serde(default = "artifacts_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub artifacts: i32,
    /// Transaction gossip between coordinators (libp2p).
    #[serde(default = "gossip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub gossip: i32,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            p2p: p2p_port(),
            api: api_port(),
            artifacts: artifacts_port(),
            gossip: gossip_port(),
        }
    }
}

fn p2p_port() -> i32 {
    26656
}
fn api_port() -> i32 {
    26657
}
fn artifacts_port() -> i32 {
    26658
}
fn gossip_port() -> i32 {
    26659
}

/// What the network is doing, for people.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum NetworkPhase {
    /// Keys, genesis and coordinators are being created.
    #[default]
    Pending,
    /// A quorum of coordinators is up and the chain is moving.
    Running,
    /// Fewer coordinators than a quorum are ready, or the chain stopped.
    Degraded,
    /// `spec.suspend`: coordinators stopped.
    Suspended,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PotNetworkStatus {
    #[serde(default)]
    pub phase: NetworkPhase,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `ready/coordinators`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    #[serde(default)]
    pub ready_coordinators: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    /// Hash of the genesis the coordinators run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis_hash: Option<String>,
    /// The coordinators' addresses, in ordinal order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordinator_addresses: Vec<String>,
    /// The height of the last block, read from the coordinators' API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_block_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_block_time: Option<Time>,
    /// Tasks open for claims: what miner fleets scale by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_tasks: Option<u64>,
    /// The API Service's URL inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// `Ready`, `Progressing` and `Degraded`, with the generation each was computed from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
