//! The JSON bodies of a node's HTTP API (`/v1/...`), shared by the server in `pot-node` and the
//! typed [`crate::client::Client`] used by the CLI, the operator and tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::block::Block;
use crate::commit::Commit;
use crate::crypto::Address;
use crate::hash::Hash;
use crate::state::{Phase, Reputation, Task, Unbonding};
use crate::tx::{SignedTx, TaskId};
use crate::units::{Amount, Height};

/// `POST /v1/tx`: a signed transaction in its canonical encoding, hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitTx {
    pub tx: String,
}

impl SubmitTx {
    pub fn new(stx: &SignedTx) -> SubmitTx {
        SubmitTx {
            tx: hex::encode(stx.encode()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub hash: Hash,
}

/// `POST /v1/txs`: up to [`SubmitTxs::MAX`] signed transactions, each hex as in [`SubmitTx`],
/// judged in the order given (so one sender's consecutive nonces may share a request). One
/// request instead of one per transaction, for clients that send many: the HTTP round trip
/// costs a node more than checking a transaction's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitTxs {
    pub txs: Vec<String>,
}

impl SubmitTxs {
    /// Transactions in one request at most.
    pub const MAX: usize = 1024;

    pub fn new<'a>(txs: impl IntoIterator<Item = &'a SignedTx>) -> SubmitTxs {
        SubmitTxs {
            txs: txs.into_iter().map(|t| hex::encode(t.encode())).collect(),
        }
    }
}

/// The answer to [`SubmitTxs`]: one verdict per transaction, in the order submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedTxs {
    pub results: Vec<TxVerdict>,
}

/// What `POST /v1/tx` would have answered for one transaction of a [`SubmitTxs`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum TxVerdict {
    /// Admitted, or held or decided already (a 200 alone).
    Admitted { hash: Hash },
    /// Not admitted: the status and error it would have got alone.
    Refused {
        status: u16,
        #[serde(flatten)]
        error: ApiError,
    },
}

/// `GET /v1/tx/{hash}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TxStatus {
    /// In this node's mempool, ready for the next block.
    Pending,
    /// In this node's mempool, held until its sender's next nonce (`next_nonce`) reaches its
    /// own: an earlier transaction from the same sender has not arrived yet.
    Queued { next_nonce: u64 },
    /// In a decided block.
    Included { height: Height, index: u32 },
    /// Turned away or evicted, with the reason.
    Rejected { reason: String },
}

/// `GET /v1/chain/head`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub chain_id: String,
    pub genesis_hash: Hash,
    pub height: Height,
    pub hash: Hash,
    pub time_ms: u64,
    pub state_root: Hash,
    /// The last block's randomness beacon.
    pub beacon: Hash,
    /// The least fee a transaction must offer (the chain's `tx_fee`).
    pub tx_fee: Amount,
}

/// One transaction of a block, summarised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxSummary {
    pub hash: Hash,
    pub signer: Address,
    pub nonce: u64,
    /// The fee it paid (burned).
    pub fee: Amount,
    pub kind: String,
}

/// `GET /v1/blocks/{height}`: the header, the transactions, and who signed the commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub height: Height,
    pub hash: Hash,
    pub prev_hash: Hash,
    pub time_ms: u64,
    pub proposer: Address,
    /// The block's randomness beacon (checked against the proposer's VRF proof).
    pub beacon: Hash,
    pub tx_root: Hash,
    pub state_root: Hash,
    pub txs: Vec<TxSummary>,
    /// Coordinators whose precommits are in the commit certificate.
    pub committed_by: Vec<Address>,
    /// The consensus round the block was decided in.
    pub round: u32,
}

impl BlockInfo {
    pub fn new(block: &Block, committed_by: Vec<Address>, round: u32) -> BlockInfo {
        let h = &block.header;
        BlockInfo {
            height: h.height,
            hash: block.hash(),
            prev_hash: h.prev_hash,
            time_ms: h.time_ms,
            proposer: h.proposer,
            beacon: h.beacon,
            tx_root: h.tx_root,
            state_root: h.state_root,
            txs: block
                .txs
                .iter()
                .map(|t| TxSummary {
                    hash: t.hash(),
                    signer: t.tx.signer,
                    nonce: t.tx.nonce,
                    fee: t.tx.fee,
                    kind: t.tx.body.kind().to_string(),
                })
                .collect(),
            committed_by,
            round,
        }
    }
}

/// `GET /v1/blocks/{height}/decided` (borsh, not JSON): a block and the commit certificate
/// that decided it, for nodes that follow the chain and check the certificate themselves.
#[derive(Clone, Debug, PartialEq, Eq, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub struct DecidedBlock {
    pub block: Block,
    pub commit: Commit,
}

impl DecidedBlock {
    /// The largest encoding a follower reads: the ledger's block limit, the header, and a
    /// certificate of up to a few hundred signatures.
    pub const MAX_BYTES: usize = crate::ledger::block_limits::MAX_TX_BYTES_TOTAL + 256 * 1024;
}

/// `GET /v1/accounts/{address}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub address: Address,
    pub balance: Amount,
    pub nonce: u64,
    pub miner_bond: Amount,
    pub validator_bond: Amount,
    /// The part of each bond reserved as collateral by active tasks (not unbondable).
    pub miner_reserved: Amount,
    pub validator_reserved: Amount,
    pub unbonding: Vec<Unbonding>,
    pub reputation: Reputation,
}

/// `GET /v1/tasks/{id}` and the entries of `GET /v1/tasks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: TaskId,
    /// The phase at the next height (what a transaction sent now would meet).
    pub phase: Phase,
    pub task: Task,
}

/// `GET /v1/queue`: what the operator scales miners by.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    pub height: Height,
    /// Tasks still being worked on (not finalized or failed).
    pub open: u64,
    /// Tasks per phase, open or not.
    pub by_phase: BTreeMap<Phase, u64>,
}

/// Every error body: a stable machine-readable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// `GET /v1/node/status` of a miner or validator: its role, how far it has followed the chain,
/// whether it is draining, and the tasks it is working on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `miner`, `validator` or `miner+validator`.
    pub role: String,
    pub address: Address,
    /// The last block this node followed (and checked).
    pub height: Height,
    /// It takes no new task and finishes those it has.
    pub draining: bool,
    pub tasks: BTreeMap<TaskId, TaskWork>,
    /// Seconds this process spent on each kind of work since it started: `training`,
    /// `checkpointing` (taking, hashing, storing and publishing checkpoints), `transfer`
    /// (fetching datasets and checkpoints), `replay_sampled`, `replay_top_q`, `evaluation`.
    #[serde(default)]
    pub work_seconds: BTreeMap<String, f64>,
}

/// Where a miner is with one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskWork {
    Training {
        step: u64,
        steps: u64,
        loss: Option<f32>,
        steps_per_second: Option<f64>,
    },
    /// Trained; its claim is about to be committed.
    Trained,
    Committed,
    Revealed,
    Failed {
        error: String,
    },
}

impl NodeStatus {
    /// Tasks still to be trained, committed or revealed (what a drain waits for).
    pub fn unfinished(&self) -> usize {
        self.tasks
            .values()
            .filter(|w| !matches!(w, TaskWork::Revealed | TaskWork::Failed { .. }))
            .count()
    }
}
