//! The ledger state: everything the chain agrees on, in ordered maps so that its encoding, and
//! so the state root, is the same on every node.

use std::collections::BTreeMap;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::crypto::Address;
use crate::genesis::{Coordinator, Genesis, Params};
use crate::hash::Hash;
use crate::merkle_map::MerkleMap;
use crate::tx::{Claim, DatasetRef, Dispute, Report, Role, TaskId, TaskSpec, Windows};
use crate::units::{Amount, Fixed, Height};

#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Account {
    pub balance: Amount,
    /// The nonce the account's next transaction must carry.
    pub nonce: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Unbonding {
    pub amount: Amount,
    /// The first height at which the amount is back in the balance.
    pub release_height: Height,
}

/// The stake an account holds in one role. Part of the bonded stake is *reserved* as collateral
/// for claims and validation assignments of active tasks: it cannot be unbonded until those
/// tasks end, and slashes are taken from it, so stake can never leave before its slash.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Stake {
    pub bonded: Amount,
    /// The part of `bonded` that backs active tasks (never more than `bonded`).
    pub reserved: Amount,
    pub unbonding: Vec<Unbonding>,
}

impl Stake {
    /// Bonded stake not reserved by any task: what can be unbonded or newly reserved.
    pub fn free(&self) -> Amount {
        self.bonded.saturating_sub(self.reserved)
    }

    /// Bonded plus unbonding: what a slash is computed from.
    pub fn total(&self) -> Amount {
        self.unbonding
            .iter()
            .fold(self.bonded, |acc, u| Amount(acc.0 + u.amount.0))
    }
}

/// Counters that let clients and operators judge miners and validators by their history.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Reputation {
    pub tasks_won: u64,
    pub claims_rejected: u64,
    pub reports_against_majority: u64,
    /// Assignments a validator did not report on (no commit, or commit without reveal).
    pub reports_missed: u64,
}

/// Where the ledger's tokens came from and went: `held == genesis + minted - burned` always.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Supply {
    pub genesis: Amount,
    pub minted: Amount,
    pub burned: Amount,
}

/// The order in which a transaction was included: ties between claims go to the earlier one.
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
pub struct TxPosition {
    pub height: Height,
    pub index: u32,
}

/// The last height of each phase of a task. A phase's transactions are accepted at heights
/// after the previous phase's end up to and including its own end.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Schedule {
    pub submitted: Height,
    pub commit_end: Height,
    pub reveal_end: Height,
    pub eval_end: Height,
    pub report_commit_end: Height,
    pub report_reveal_end: Height,
    pub challenge_end: Height,
    pub challenge_reveal_end: Height,
    pub vote_end: Height,
    pub vote_reveal_end: Height,
}

impl Schedule {
    pub fn new(submitted: Height, w: &Windows) -> Schedule {
        let commit_end = submitted + u64::from(w.commit);
        let reveal_end = commit_end + u64::from(w.reveal);
        let eval_end = reveal_end + u64::from(w.eval_reveal);
        let report_commit_end = eval_end + u64::from(w.report_commit);
        let report_reveal_end = report_commit_end + u64::from(w.report_reveal);
        let challenge_end = report_reveal_end + u64::from(w.challenge);
        let challenge_reveal_end = challenge_end + u64::from(w.challenge_reveal);
        let vote_end = challenge_reveal_end + u64::from(w.vote);
        let vote_reveal_end = vote_end + u64::from(w.vote_reveal);
        Schedule {
            submitted,
            commit_end,
            reveal_end,
            eval_end,
            report_commit_end,
            report_reveal_end,
            challenge_end,
            challenge_reveal_end,
            vote_end,
            vote_reveal_end,
        }
    }
}

/// Where a task is in its life cycle (in the API, by its snake_case name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Miners commit claims.
    Commit,
    /// Miners reveal claims.
    Reveal,
    /// Validators are assigned; the client reveals the eval set.
    EvalReveal,
    ReportCommit,
    ReportReveal,
    /// Anyone commits to a challenge.
    Challenge,
    /// Challengers reveal their disputes.
    ChallengeReveal,
    /// Challenge committees commit their votes.
    Vote,
    /// Challenge committees reveal their votes.
    VoteReveal,
    Finalized,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ReportEntry {
    pub commitment: Hash,
    pub committed_at: TxPosition,
    pub report: Option<Report>,
}

/// A validator assigned to a claim: the segments it alone must replay, and the stake it
/// reserved as collateral.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Assignment {
    pub validator: Address,
    /// Segment indices this validator replays, ascending; every validator of a claim has its
    /// own sample, so one replay cannot be shared among them off chain.
    pub segments: Vec<u32>,
    pub collateral: Amount,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ClaimEntry {
    pub commitment: Hash,
    pub committed_at: TxPosition,
    /// Escrowed with the commitment: returned if the claim is revealed, burned if not.
    pub deposit: Amount,
    /// Miner stake reserved until the task ends; an invalid claim loses all of it.
    pub collateral: Amount,
    pub claim: Option<Claim>,
    /// The salt revealed with the claim; the run seed derives from it.
    pub salt: Option<Hash>,
    /// Validators assigned from the beacon, ascending by address.
    pub assigned: Vec<Assignment>,
    pub reports: BTreeMap<Address, ReportEntry>,
}

impl ClaimEntry {
    /// The assignment of `validator`, if it is assigned to this claim.
    pub fn assignment(&self, validator: &Address) -> Option<&Assignment> {
        self.assigned.iter().find(|a| a.validator == *validator)
    }
}

/// A committee member's seat: the stake it reserved for it.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Seat {
    pub member: Address,
    pub collateral: Amount,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct VoteEntry {
    pub commitment: Hash,
    /// The revealed vote: the disputed fact is not as the report says.
    pub upheld: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ChallengeEntry {
    pub challenger: Address,
    pub commitment: Hash,
    pub committed_at: TxPosition,
    /// Escrowed at commitment; each challenge on a task costs twice the one before it.
    pub deposit: Amount,
    /// What it disputes, once revealed.
    pub dispute: Option<Dispute>,
    /// Drawn from the beacon when the reveal window closes, for the first-committed challenge
    /// of each disputed fact.
    pub committee: Vec<Seat>,
    pub votes: BTreeMap<Address, VoteEntry>,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeResult {
    /// A quorum of the committee found the fact other than reported: every validator that
    /// reported it so is slashed; the challenger and the voters who said so are paid.
    Upheld,
    /// A quorum agreed with the report: the deposit pays those voters, the rest is burned.
    Rejected,
    /// No quorum: the deposit is returned.
    Void,
    /// The same fact was disputed by an earlier commitment: the deposit is returned.
    Duplicate,
    /// Never revealed: the deposit is burned.
    Unrevealed,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PayoutKind {
    /// The winner's part of the bounty (plus rounding remainder of the validator share).
    Bounty,
    /// The network's per-task mint to the winner.
    Mint,
    /// A validator's part of the validator share.
    Validation,
    /// The bounty back to the client when no claim is valid.
    Refund,
    /// A right challenger's deposit back plus its part of the slash.
    ChallengeWon,
    /// A void or duplicate challenge's deposit back.
    ChallengeReturned,
    /// A committee member's part of the loser's loss, for a vote that matched the outcome.
    CommitteeReward,
    /// A revealed claim's commitment deposit back.
    DepositReturned,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Payout {
    pub to: Address,
    pub amount: Amount,
    pub kind: PayoutKind,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SlashReason {
    InvalidClaim,
    /// An assigned validator committed no report.
    ReportNotCommitted,
    ReportNotRevealed,
    LostChallenge,
    /// A committee member did not commit or reveal its vote, or voted against the outcome.
    CommitteeVote,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Slash {
    pub who: Address,
    pub role: Role,
    pub amount: Amount,
    pub reason: SlashReason,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ClaimOutcome {
    pub miner: Address,
    /// A quorum (a strict majority of the assigned validators) agreed, or a challenge proved
    /// fraud. Without it the claim is neither paid nor slashed.
    pub decided: bool,
    pub valid: bool,
    pub valid_reports: u32,
    pub invalid_reports: u32,
    /// The conservative median metric of the valid reports (valid claims only).
    pub median_metric: Option<Fixed>,
    /// A challenge committee found a segment that does not replay.
    pub fraud_proven: bool,
}

/// The result of a finalized task, kept on chain for queries.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Outcome {
    pub finalized_at: Height,
    pub winner: Option<Address>,
    pub winning_metric: Option<Fixed>,
    pub claims: Vec<ClaimOutcome>,
    pub challenges: Vec<ChallengeResult>,
    pub payouts: Vec<Payout>,
    pub slashes: Vec<Slash>,
    /// New supply paid to the winner (the mining reward).
    pub minted: Amount,
    /// Everything this finalization burned (slashes not paid out, forfeited deposits).
    pub burned: Amount,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The client did not reveal the eval set in time; its bounty is burned so that withholding
    /// the eval set never buys free training.
    EvalSetNotRevealed,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Active,
    Finalized(Outcome),
    Failed {
        reason: FailReason,
        at: Height,
        burned: Amount,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub client: Address,
    pub spec: TaskSpec,
    /// Escrowed until finalization.
    pub bounty: Amount,
    pub eval_commit: Hash,
    pub windows: Windows,
    pub schedule: Schedule,
    pub claims: BTreeMap<Address, ClaimEntry>,
    pub eval_set: Option<DatasetRef>,
    pub challenges: Vec<ChallengeEntry>,
    pub status: TaskStatus,
}

impl Task {
    /// The phase at `height` (the height of the block being applied).
    pub fn phase(&self, height: Height) -> Phase {
        let s = &self.schedule;
        match self.status {
            TaskStatus::Finalized(_) => Phase::Finalized,
            TaskStatus::Failed { .. } => Phase::Failed,
            TaskStatus::Active if height <= s.commit_end => Phase::Commit,
            TaskStatus::Active if height <= s.reveal_end => Phase::Reveal,
            TaskStatus::Active if height <= s.eval_end => Phase::EvalReveal,
            TaskStatus::Active if height <= s.report_commit_end => Phase::ReportCommit,
            TaskStatus::Active if height <= s.report_reveal_end => Phase::ReportReveal,
            TaskStatus::Active if height <= s.challenge_end => Phase::Challenge,
            TaskStatus::Active if height <= s.challenge_reveal_end => Phase::ChallengeReveal,
            TaskStatus::Active if height <= s.vote_end => Phase::Vote,
            TaskStatus::Active => Phase::VoteReveal,
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(self.status, TaskStatus::Active)
    }

    /// Whether challenge `i` is revealed and the first-committed to dispute its fact (a later
    /// challenge of the same fact is a duplicate: no committee, deposit returned).
    pub fn is_primary_challenge(&self, i: usize) -> bool {
        let Some(d) = self.challenges[i].dispute else {
            return false;
        };
        !self.challenges[..i].iter().any(|c| c.dispute == Some(d))
    }

    /// Funds this task holds in escrow: the bounty while active, plus claim and challenge
    /// deposits.
    pub fn escrow(&self) -> Amount {
        if !self.is_active() {
            return Amount::ZERO;
        }
        let challenges: u64 = self.challenges.iter().map(|c| c.deposit.0).sum();
        let claims: u64 = self.claims.values().map(|c| c.deposit.0).sum();
        Amount(self.bounty.0 + challenges + claims)
    }
}

/// The last applied block.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Tip {
    pub height: Height,
    /// Hash of the last block's header (the genesis hash at height 0).
    pub hash: Hash,
    pub time_ms: u64,
    /// The last block's randomness beacon (see `beacon`).
    pub beacon: Hash,
}

/// The whole ledger state. Its keyed parts are [`MerkleMap`]s, so a copy is cheap, the root
/// after a block rehashes only what the block touched, and the store writes only what changed.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct State {
    pub chain_id: String,
    pub params: Params,
    pub tip: Tip,
    pub accounts: MerkleMap<Address, Account>,
    pub stakes: MerkleMap<(Address, Role), Stake>,
    /// Every pending unbonding, by the height it matures at: a block releases what matures
    /// without scanning every stake.
    pub unbonding_queue: MerkleMap<(Height, Address, Role), ()>,
    /// Active tasks. A task leaves this map in the block that finalizes or fails it, so state
    /// does not grow with the chain's history.
    pub tasks: MerkleMap<TaskId, Task>,
    /// (height, task) for each height at whose start a task's phase may move (the block after
    /// each window that ends in a transition): a block advances the tasks due at its height
    /// without scanning every active task. Entries of tasks that ended earlier are skipped and
    /// dropped when their height comes.
    pub task_deadlines: MerkleMap<(Height, TaskId), ()>,
    /// Tasks that ended in the last block, with their outcomes. Replaced every block: the state
    /// root of the block that ended a task commits to its outcome, and nodes keep it in their
    /// stores for queries.
    pub ended: Vec<Task>,
    pub reputation: MerkleMap<Address, Reputation>,
    pub coordinators: Vec<Coordinator>,
    pub supply: Supply,
}

/// Everything in [`State`] but its keyed maps.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct StateScalars {
    pub chain_id: String,
    pub params: Params,
    pub tip: Tip,
    pub ended: Vec<Task>,
    pub coordinators: Vec<Coordinator>,
    pub supply: Supply,
}

/// The keyed maps of a [`State`].
#[derive(Clone, Debug, Default)]
pub struct StateMaps {
    pub accounts: MerkleMap<Address, Account>,
    pub stakes: MerkleMap<(Address, Role), Stake>,
    pub unbonding_queue: MerkleMap<(Height, Address, Role), ()>,
    pub tasks: MerkleMap<TaskId, Task>,
    pub task_deadlines: MerkleMap<(Height, TaskId), ()>,
    pub reputation: MerkleMap<Address, Reputation>,
}

impl State {
    /// The state at height 0. The genesis must have been validated (as `Genesis::from_yaml` does).
    pub fn from_genesis(g: &Genesis) -> State {
        let mut accounts = MerkleMap::new();
        for b in &g.balances {
            accounts.insert(
                b.address,
                Account {
                    balance: b.amount,
                    nonce: 0,
                },
            );
        }
        let mut stakes = MerkleMap::new();
        for s in &g.stakes {
            stakes.insert(
                (s.address, s.role),
                Stake {
                    bonded: s.amount,
                    reserved: Amount::ZERO,
                    unbonding: Vec::new(),
                },
            );
        }
        State {
            chain_id: g.chain_id.clone(),
            params: g.params.clone(),
            tip: Tip {
                height: 0,
                hash: g.hash(),
                time_ms: g.genesis_time_ms,
                beacon: crate::beacon::genesis_beacon(&g.hash()),
            },
            accounts,
            stakes,
            unbonding_queue: MerkleMap::new(),
            tasks: MerkleMap::new(),
            task_deadlines: MerkleMap::new(),
            ended: Vec::new(),
            reputation: MerkleMap::new(),
            coordinators: g.coordinators.clone(),
            supply: Supply {
                genesis: g.total_supply().expect("validated genesis"),
                minted: Amount::ZERO,
                burned: Amount::ZERO,
            },
        }
    }

    /// The state root: SHA-256 over the canonical encoding of the scalar parts and the Merkle
    /// roots of the keyed maps, everything except the tip's block hash (a block's header holds
    /// the state root, so the root cannot include that header's hash). The maps cache their
    /// subtree hashes, so after a block only what it touched is rehashed. The destructuring is
    /// exhaustive: a new field will not compile until it is either hashed here or deliberately
    /// left out.
    pub fn state_root(&self) -> Hash {
        let State {
            chain_id,
            params,
            tip:
                Tip {
                    height,
                    hash: _,
                    time_ms,
                    beacon,
                },
            accounts,
            stakes,
            unbonding_queue,
            tasks,
            task_deadlines,
            ended,
            reputation,
            coordinators,
            supply,
        } = self;
        Hash::of_value(
            "pot/state",
            &(
                chain_id,
                params,
                height,
                time_ms,
                beacon,
                accounts.root(),
                stakes.root(),
                unbonding_queue.root(),
                tasks.root(),
                task_deadlines.root(),
                ended,
                reputation.root(),
                coordinators,
                supply,
            ),
        )
    }

    /// The state less its keyed maps (which a store keeps a row per entry of).
    pub fn scalars(&self) -> StateScalars {
        let State {
            chain_id,
            params,
            tip,
            accounts: _,
            stakes: _,
            unbonding_queue: _,
            tasks: _,
            task_deadlines: _,
            ended,
            reputation: _,
            coordinators,
            supply,
        } = self;
        StateScalars {
            chain_id: chain_id.clone(),
            params: params.clone(),
            tip: tip.clone(),
            ended: ended.clone(),
            coordinators: coordinators.clone(),
            supply: supply.clone(),
        }
    }

    /// Put a state back together from its scalars and maps (as a store loads it).
    pub fn from_parts(scalars: StateScalars, maps: StateMaps) -> State {
        let StateScalars {
            chain_id,
            params,
            tip,
            ended,
            coordinators,
            supply,
        } = scalars;
        let StateMaps {
            accounts,
            stakes,
            unbonding_queue,
            tasks,
            task_deadlines,
            reputation,
        } = maps;
        State {
            chain_id,
            params,
            tip,
            accounts,
            stakes,
            unbonding_queue,
            tasks,
            task_deadlines,
            ended,
            reputation,
            coordinators,
            supply,
        }
    }

    pub fn height(&self) -> Height {
        self.tip.height
    }

    pub fn account(&self, a: &Address) -> Account {
        self.accounts.get(a).cloned().unwrap_or_default()
    }

    pub fn balance(&self, a: &Address) -> Amount {
        self.accounts.get(a).map(|x| x.balance).unwrap_or_default()
    }

    pub fn bonded(&self, a: &Address, role: Role) -> Amount {
        self.stakes
            .get(&(*a, role))
            .map(|s| s.bonded)
            .unwrap_or_default()
    }

    /// Bonded stake not reserved by active tasks.
    pub fn free_stake(&self, a: &Address, role: Role) -> Amount {
        self.stakes
            .get(&(*a, role))
            .map(Stake::free)
            .unwrap_or_default()
    }

    pub fn reputation_of(&self, a: &Address) -> Reputation {
        self.reputation.get(a).cloned().unwrap_or_default()
    }

    /// Every token the ledger holds: balances, bonds (bonded and unbonding) and task escrow.
    /// Supply conservation says this always equals [`State::expected_supply`].
    pub fn held_supply(&self) -> u128 {
        let balances: u128 = self
            .accounts
            .values()
            .map(|a| u128::from(a.balance.0))
            .sum();
        let stakes: u128 = self.stakes.values().map(|s| u128::from(s.total().0)).sum();
        let escrow: u128 = self.tasks.values().map(|t| u128::from(t.escrow().0)).sum();
        balances + stakes + escrow
    }

    /// `genesis + minted - burned`.
    pub fn expected_supply(&self) -> u128 {
        u128::from(self.supply.genesis.0) + u128::from(self.supply.minted.0)
            - u128::from(self.supply.burned.0)
    }
}
