//! Every reason the ledger rejects a transaction or a block, with the values that caused it.

use crate::crypto::{Address, SignatureError};
use crate::hash::Hash;
use crate::state::Phase;
use crate::tx::{Role, TaskId};
use crate::units::{Amount, Fixed, Height};

/// Why a transaction was rejected. A rejected transaction changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("transaction is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("transaction is for chain {got:?}, this chain is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error(transparent)]
    BadSignature(#[from] SignatureError),
    #[error("wrong nonce for {signer}: expected {expected}, got {got}")]
    WrongNonce {
        signer: Address,
        expected: u64,
        got: u64,
    },
    #[error("fee {got} is below the chain's minimum transaction fee {min}")]
    FeeTooLow { min: Amount, got: Amount },
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("insufficient funds: need {need}, balance is {have}")]
    InsufficientFunds { need: Amount, have: Amount },
    #[error("insufficient {role:?} bond: need {need}, bonded {have}")]
    InsufficientBond {
        role: Role,
        need: Amount,
        have: Amount,
    },
    #[error(
        "{role:?} stake is reserved by active tasks: {free} of {bonded} bonded is free to unbond, asked for {asked}"
    )]
    StakeLocked {
        role: Role,
        asked: Amount,
        free: Amount,
        bonded: Amount,
    },
    #[error("too many pending unbondings (at most {max})")]
    TooManyUnbondings { max: usize },
    #[error("field {field} is {len} long, over the limit of {max}")]
    FieldTooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid task spec: {field}: {why}")]
    InvalidSpec {
        field: &'static str,
        why: &'static str,
    },
    #[error("bounty {got} is below the minimum {min}")]
    BountyTooSmall { min: Amount, got: Amount },
    #[error("window {name} = {value} blocks is outside {min}..={max}")]
    BadWindow {
        name: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("unknown task {0}")]
    UnknownTask(TaskId),
    #[error("task {task} is in phase {actual:?}; {kind} is accepted only in phase {expected:?}")]
    WrongPhase {
        task: TaskId,
        kind: &'static str,
        expected: Phase,
        actual: Phase,
    },
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    #[error("the task's client cannot claim its own task")]
    ClientCannotClaim,
    #[error("task already has the maximum of {max} claims")]
    TooManyClaims { max: u32 },
    #[error("no {0} commitment from this account to reveal")]
    NoCommitment(&'static str),
    #[error("revealed {0} does not match the commitment")]
    RevealMismatch(&'static str),
    #[error("only the task's client {client} may do this")]
    NotClient { client: Address },
    #[error("claim has {got} steps, the task asks for {expected}")]
    StepsMismatch { expected: u64, got: u64 },
    #[error("claim's hyper-parameters must name exactly the task's ranges in order: {expected:?}")]
    HyperMismatch { expected: Vec<String> },
    #[error("hyper-parameter {name} = {value} is outside {min}..={max}")]
    HyperOutOfRange {
        name: String,
        value: Fixed,
        min: Fixed,
        max: Fixed,
    },
    #[error("no revealed claim from miner {0}")]
    UnknownClaim(Address),
    #[error("validator {validator} is not assigned to the claim of {miner}")]
    NotAssigned { validator: Address, miner: Address },
    #[error(
        "report must cover the sampled segments {expected:?} in order, then at most 128 other segments of the run, ascending"
    )]
    WrongSegments { expected: Vec<u32> },
    #[error("report verdict does not follow from its checks")]
    InconsistentReport,
    #[error("report metric {0} is outside 0..2^50 millionths")]
    MetricOutOfRange(Fixed),
    #[error("validator {validator} revealed no report on the claim of {miner}")]
    UnknownReport { validator: Address, miner: Address },
    #[error("the challenged report states no {0:?}")]
    FactNotReported(crate::tx::Fact),
    #[error("{fact:?} cannot be disputed here: {why}")]
    NotDisputable {
        fact: crate::tx::Fact,
        why: &'static str,
    },
    #[error("{0} validates the disputed claim and cannot challenge it")]
    ChallengerAssigned(Address),
    #[error("challenge {challenge} was committed by {challenger}, not by this account")]
    NotYourChallenge { challenge: u32, challenger: Address },
    #[error("a validator cannot challenge its own report")]
    SelfChallenge,
    #[error("task already has the maximum of {max} challenges")]
    TooManyChallenges { max: u32 },
    #[error("unknown challenge {0}")]
    UnknownChallenge(u32),
    #[error("{0} is not on the challenge committee")]
    NotOnCommittee(Address),
    #[error("arithmetic overflow")]
    Overflow,
}

/// Why a block was rejected. A rejected block changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block height {got}, expected {expected}")]
    WrongHeight { expected: Height, got: Height },
    #[error("block's previous hash {got} is not the tip {expected}")]
    WrongPrevHash { expected: Hash, got: Hash },
    #[error("block time {got} ms is not after the previous block's {prev} ms")]
    TimeNotIncreasing { prev: u64, got: u64 },
    #[error("block has {count} transactions, over the limit of {max}")]
    TooManyTxs { count: usize, max: usize },
    #[error("block transactions take {bytes} bytes, over the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("transaction root mismatch: header says {header}, transactions give {computed}")]
    TxRootMismatch { header: Hash, computed: Hash },
    #[error("transaction {index} ({hash}) rejected: {error}")]
    Tx {
        index: usize,
        hash: Hash,
        error: TxError,
    },
    #[error("block proposer {0} is not a coordinator")]
    UnknownProposer(Address),
    #[error("block beacon: {0}")]
    BadBeacon(#[from] crate::beacon::BeaconError),
    #[error("block beacon {header} is not the one its VRF proof gives ({computed})")]
    WrongBeacon { header: Hash, computed: Hash },
    #[error("state root mismatch: header says {header}, execution gives {computed}")]
    StateRootMismatch { header: Hash, computed: Hash },
}
