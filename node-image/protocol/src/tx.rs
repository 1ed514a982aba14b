//! Transactions: the signed envelope and one body type per kind in the protocol table.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::crypto::{Address, SecretKey, Signature, SignatureError};
use crate::encoding;
use crate::hash::Hash;
use crate::units::{Amount, Fixed};

/// Size limits on what a transaction may carry. Everything a node stores or gossips is bounded.
pub mod limits {
    /// The whole encoded signed transaction.
    pub const MAX_TX_BYTES: usize = 16 * 1024;
    /// A chain id.
    pub const MAX_CHAIN_ID: usize = 64;
    /// A model descriptor (`mlp:64,32`, `torchscript:<locator>#<sha256>`, ...).
    pub const MAX_MODEL: usize = 512;
    /// A dataset or artifact locator (a path or a URL).
    pub const MAX_LOCATOR: usize = 1024;
    /// Hyper-parameter ranges a task may declare (and so values a claim names).
    pub const MAX_HYPER: usize = 16;
    /// A hyper-parameter name.
    pub const MAX_HYPER_NAME: usize = 32;
    /// Segments a report may name besides its sampled ones: the largest-update segments and
    /// the one before each (twice the largest `top_q` a task may ask for).
    pub const MAX_EXTRA_SEGMENTS: usize = 2 * crate::task::limits::MAX_TOP_Q as usize;
}

/// The two staking roles; each has its own bond so slashing one never touches the other.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Miner,
    Validator,
}

pub use crate::task::{
    BlobRef, DataFormat, DatasetRef, HyperRange, HyperValue, LossKind, MetricKind, Optimizer,
    TaskSpec, Verification,
};

/// Lengths of the task's phases, in blocks.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Windows {
    /// Miners commit claims.
    pub commit: u32,
    /// Miners reveal claims.
    pub reveal: u32,
    /// The client reveals the eval set (validators start replaying).
    pub eval_reveal: u32,
    /// Validators commit reports.
    pub report_commit: u32,
    /// Validators reveal reports.
    pub report_reveal: u32,
    /// Anyone may commit to a challenge of a revealed report (the fact stays hidden).
    pub challenge: u32,
    /// Challengers reveal what they dispute (only used when there was a challenge).
    pub challenge_reveal: u32,
    /// Challenge committees commit their votes (only used when a challenge was revealed).
    pub vote: u32,
    /// Challenge committees reveal their votes.
    pub vote_reveal: u32,
}

impl Windows {
    /// Every window with its name, in phase order.
    pub fn named(&self) -> [(&'static str, u32); 9] {
        [
            ("commit", self.commit),
            ("reveal", self.reveal),
            ("eval_reveal", self.eval_reveal),
            ("report_commit", self.report_commit),
            ("report_reveal", self.report_reveal),
            ("challenge", self.challenge),
            ("challenge_reveal", self.challenge_reveal),
            ("vote", self.vote),
            ("vote_reveal", self.vote_reveal),
        ]
    }
}

/// What a miner reveals about its run.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Claim {
    /// Hash of the final model's canonical checkpoint bytes.
    pub model_hash: Hash,
    /// Merkle root over all checkpoint hashes, `W_0` (the initialisation) to `W_n`.
    pub checkpoint_root: Hash,
    pub steps: u64,
    /// The miner's hyper-parameters: one per declared range, same order.
    pub hyper: Vec<HyperValue>,
    /// Where validators fetch checkpoints and the model.
    pub artifacts: String,
}

/// Why a validator rejects a claim.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum InvalidReason {
    /// `W_0` is not the initialisation bound to the miner's run seed (e.g. a copied trajectory).
    InitMismatch,
    /// The last checkpoint is not the claimed model.
    FinalMismatch,
    /// A sampled segment did not replay to the next checkpoint.
    SegmentMismatch,
    /// Checkpoints or proofs could not be fetched or did not match the Merkle root.
    ArtifactsUnavailable,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Valid,
    Invalid(InvalidReason),
}

/// The replay result of one sampled segment.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct SegmentResult {
    pub index: u32,
    pub ok: bool,
}

/// A validator's report on one claim.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    /// The claimed model's metric on the revealed eval set.
    pub metric: Fixed,
    /// `W_0` is the initialisation bound to the miner's seed.
    pub init_ok: bool,
    /// The last checkpoint is the claimed model.
    pub final_ok: bool,
    /// One result per sampled segment, in the sampled (ascending) order; then, ascending, the
    /// other segments the validator replayed because their updates were among the largest
    /// (the task's top-Q, and the segment before each). Every one can be challenged.
    pub segments: Vec<SegmentResult>,
}

impl Report {
    /// Whether the verdict follows from the facts reported: `Valid` exactly when every check
    /// passed, and an `Invalid` reason names a check that failed.
    pub fn is_consistent(&self) -> bool {
        let all_segments = self.segments.iter().all(|s| s.ok);
        match self.verdict {
            Verdict::Valid => self.init_ok && self.final_ok && all_segments,
            Verdict::Invalid(InvalidReason::InitMismatch) => !self.init_ok,
            Verdict::Invalid(InvalidReason::FinalMismatch) => !self.final_ok,
            Verdict::Invalid(InvalidReason::SegmentMismatch) => !all_segments,
            Verdict::Invalid(InvalidReason::ArtifactsUnavailable) => true,
        }
    }
}

/// One fact of a validator's report that a challenge disputes. Every fact a report states can
/// be disputed.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Fact {
    /// Whether sampled segment `i` replays (`SegmentResult::ok`).
    Segment(u32),
    /// Whether `W_0` is the initialisation bound to the miner's seed (`init_ok`).
    Init,
    /// Whether the last checkpoint is the claimed model (`final_ok`).
    Final,
    /// Whether the claim's artifacts could be fetched and matched the Merkle root (a report
    /// says not exactly when its verdict is `ArtifactsUnavailable`).
    Artifacts,
    /// The claimed model's metric on the eval set.
    Metric,
}

impl Fact {
    /// What `report` says this fact is: passed (`true`) or failed. `None` for the metric (a
    /// value, not a check) and for a segment the report does not cover.
    pub fn passed_in(&self, report: &Report) -> Option<bool> {
        match self {
            Fact::Segment(i) => report.segments.iter().find(|s| s.index == *i).map(|s| s.ok),
            Fact::Init => Some(report.init_ok),
            Fact::Final => Some(report.final_ok),
            Fact::Artifacts => {
                Some(report.verdict != Verdict::Invalid(InvalidReason::ArtifactsUnavailable))
            }
            Fact::Metric => None,
        }
    }
}

impl Fact {
    /// What `report` really states about this fact, for judging who stated it the same way:
    /// nothing for the metric (a value) and artifact availability (the miner's to control),
    /// and nothing at all in a report that found the artifacts unavailable (its other fields
    /// are placeholders).
    pub fn stated_in(&self, report: &Report) -> Option<bool> {
        if report.verdict == Verdict::Invalid(InvalidReason::ArtifactsUnavailable) {
            return None;
        }
        match self {
            Fact::Metric | Fact::Artifacts => None,
            _ => self.passed_in(report),
        }
    }
}

/// What a challenge disputes: one fact of `validator`'s report on `miner`'s claim.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
pub struct Dispute {
    pub miner: Address,
    pub validator: Address,
    pub fact: Fact,
}

/// Identifies a task: `H(client ‖ nonce of the SubmitTask)`, unique and known before inclusion.
pub type TaskId = Hash;

/// The body of a transaction: one variant per kind.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxBody {
    Transfer {
        to: Address,
        amount: Amount,
    },
    Bond {
        role: Role,
        amount: Amount,
    },
    Unbond {
        role: Role,
        amount: Amount,
    },
    SubmitTask {
        spec: TaskSpec,
        bounty: Amount,
        /// `eval_commitment(eval set, salt)`.
        eval_commit: Hash,
        windows: Windows,
    },
    CommitClaim {
        task: TaskId,
        /// `claim_commitment(task, miner, claim, salt)`.
        commitment: Hash,
    },
    RevealClaim {
        task: TaskId,
        claim: Claim,
        salt: Hash,
    },
    RevealEvalSet {
        task: TaskId,
        eval_set: DatasetRef,
        salt: Hash,
    },
    CommitReport {
        task: TaskId,
        /// The miner whose claim is reported on.
        miner: Address,
        /// `report_commitment(task, miner, validator, report, salt)`.
        commitment: Hash,
    },
    RevealReport {
        task: TaskId,
        miner: Address,
        report: Report,
        salt: Hash,
    },
    /// Commit to disputing one fact of a report; a deposit is escrowed. The dispute stays
    /// hidden until the reveal, so nobody can copy it and take its reward.
    Challenge {
        task: TaskId,
        /// `challenge_commitment(task, challenger, dispute, salt)`.
        commitment: Hash,
    },
    /// Reveal the dispute behind challenge number `challenge` (the challenger's own).
    RevealChallenge {
        task: TaskId,
        challenge: u32,
        dispute: Dispute,
        salt: Hash,
    },
    /// A committee member commits to its vote on challenge number `challenge`.
    CommitVote {
        task: TaskId,
        challenge: u32,
        /// `vote_commitment(task, challenge, member, upheld, salt)`.
        commitment: Hash,
    },
    /// A committee member reveals its vote: `upheld` when it found the disputed fact to be
    /// other than the report says (or, for the metric, outside the task's tolerance).
    RevealVote {
        task: TaskId,
        challenge: u32,
        upheld: bool,
        salt: Hash,
    },
}

impl TxBody {
    /// The kind's name, for errors, logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TxBody::Transfer { .. } => "transfer",
            TxBody::Bond { .. } => "bond",
            TxBody::Unbond { .. } => "unbond",
            TxBody::SubmitTask { .. } => "submit_task",
            TxBody::CommitClaim { .. } => "commit_claim",
            TxBody::RevealClaim { .. } => "reveal_claim",
            TxBody::RevealEvalSet { .. } => "reveal_eval_set",
            TxBody::CommitReport { .. } => "commit_report",
            TxBody::RevealReport { .. } => "reveal_report",
            TxBody::Challenge { .. } => "challenge",
            TxBody::RevealChallenge { .. } => "reveal_challenge",
            TxBody::CommitVote { .. } => "commit_vote",
            TxBody::RevealVote { .. } => "reveal_vote",
        }
    }
}

/// The signed part of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Tx {
    /// Binds the signature to one chain, so a transaction cannot be replayed on another.
    pub chain_id: String,
    pub signer: Address,
    /// Must equal the signer's account nonce; replays are rejected.
    pub nonce: u64,
    /// Burned when the transaction is included; at least the chain's `tx_fee`. A full mempool
    /// keeps the transactions that offer more.
    pub fee: Amount,
    pub body: TxBody,
}

const TX_SIGN_TAG: &str = "pot/tx/v1";

impl Tx {
    /// The bytes that are signed: a domain tag and the canonical encoding.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(TX_SIGN_TAG.as_bytes());
        out.extend_from_slice(&encoding::encode(self));
        out
    }

    pub fn sign(self, key: &SecretKey) -> SignedTx {
        debug_assert_eq!(
            key.address(),
            self.signer,
            "signing with another account's key"
        );
        let signature = key.sign(&self.signing_bytes());
        SignedTx {
            tx: self,
            signature,
        }
    }
}

/// A transaction with its signature: what is gossiped, included in blocks, and hashed.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedTx {
    pub tx: Tx,
    pub signature: Signature,
}

impl SignedTx {
    /// The transaction id: SHA-256 over the canonical encoding, signature included.
    pub fn hash(&self) -> Hash {
        Hash::of_value("pot/tx-id", self)
    }

    pub fn verify_signature(&self) -> Result<(), SignatureError> {
        self.tx
            .signer
            .verify(&self.tx.signing_bytes(), &self.signature)
    }

    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decode a transaction received from outside, bounded by [`limits::MAX_TX_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<SignedTx, encoding::DecodeError> {
        encoding::decode_limited(bytes, limits::MAX_TX_BYTES)
    }
}

/// The task id a client's `SubmitTask` with `nonce` creates.
pub fn task_id(client: &Address, nonce: u64) -> TaskId {
    Hash::tagged("pot/task-id", &[&client.0, &nonce.to_le_bytes()])
}

/// A miner's commitment to its claim. It binds the miner's address, so a copied commitment can
/// never be revealed by anyone else.
pub fn claim_commitment(task: &TaskId, miner: &Address, claim: &Claim, salt: &Hash) -> Hash {
    Hash::of_value("pot/claim-commit", &(task, miner, claim, salt))
}

/// A validator's commitment to its report on `miner`'s claim.
pub fn report_commitment(
    task: &TaskId,
    miner: &Address,
    validator: &Address,
    report: &Report,
    salt: &Hash,
) -> Hash {
    Hash::of_value("pot/report-commit", &(task, miner, validator, report, salt))
}

/// A challenger's commitment to its dispute. It binds the challenger, so a copied commitment
/// can never be revealed by anyone else.
pub fn challenge_commitment(
    task: &TaskId,
    challenger: &Address,
    dispute: &Dispute,
    salt: &Hash,
) -> Hash {
    Hash::of_value("pot/challenge-commit", &(task, challenger, dispute, salt))
}

/// A committee member's commitment to its vote on a challenge.
pub fn vote_commitment(
    task: &TaskId,
    challenge: u32,
    member: &Address,
    upheld: bool,
    salt: &Hash,
) -> Hash {
    Hash::of_value("pot/vote-commit", &(task, challenge, member, upheld, salt))
}

/// The client's commitment to its hidden eval set: `H(locator ‖ sha256 ‖ salt)`. It binds the
/// locator too, so a client cannot reveal a dead locator for the committed hash after seeing
/// the claims.
pub fn eval_commitment(eval_set: &DatasetRef, salt: &Hash) -> Hash {
    Hash::of_value("pot/eval-commit", &(eval_set, salt))
}

/// The run seed of a miner's training run: `H(task seed ‖ miner ‖ salt)`. Initial parameters
/// and data order come from it, so each miner's `W_0` is its own.
pub fn run_seed(task_seed: u64, miner: &Address, salt: &Hash) -> Hash {
    Hash::tagged(
        "pot/run-seed",
        &[&task_seed.to_le_bytes(), &miner.0, &salt.0],
    )
}
