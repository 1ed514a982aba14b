//! The ledger state: everything the chain agrees on, in ordered maps so that its encoding, and
//! so the state root, is the same on every node.

use std::collections::BTreeMap;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::crypto::Address;
use crate::genesis::{Coordinator, Genesis, Params};
use crate::hash::Hash;
use crate::tx::{Claim, DatasetRef, Report, Role, TaskId, TaskSpec, Windows};
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

/// The stake an account holds in one role. Unbonding funds stay slashable until released.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Stake {
    pub bonded: Amount,
    pub unbonding: Vec<Unbonding>,
}

impl Stake {
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
    pub resolution_end: Height,
}

impl Schedule {
    pub fn new(submitted: Height, w: &Windows) -> Schedule {
        let commit_end = submitted + u64::from(w.commit);
        let reveal_end = commit_end + u64::from(w.reveal);
        let eval_end = reveal_end + u64::from(w.eval_reveal);
        let report_commit_end = eval_end + u64::from(w.report_commit);
        let report_reveal_end = report_commit_end + u64::from(w.report_reveal);
        let challenge_end = report_reveal_end + u64::from(w.challenge);
        let resolution_end = challenge_end + u64::from(w.resolution);
        Schedule {
            submitted,
            commit_end,
            reveal_end,
            eval_end,
            report_commit_end,
            report_reveal_end,
            challenge_end,
            resolution_end,
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
    Challenge,
    /// A challenge committee votes.
    Resolution,
    Finalized,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ReportEntry {
    pub commitment: Hash,
    pub committed_at: TxPosition,
    pub report: Option<Report>,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ClaimEntry {
    pub commitment: Hash,
    pub committed_at: TxPosition,
    pub claim: Option<Claim>,
    /// The salt revealed with the claim; the run seed derives from it.
    pub salt: Option<Hash>,
    /// Validators assigned from the beacon, ascending.
    pub assigned: Vec<Address>,
    /// Segment indices every assigned validator replays, ascending.
    pub segments: Vec<u32>,
    pub reports: BTreeMap<Address, ReportEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ChallengeEntry {
    pub challenger: Address,
    pub miner: Address,
    pub validator: Address,
    pub segment: u32,
    pub deposit: Amount,
    /// Chosen from the beacon when the challenge window closes.
    pub committee: Vec<Address>,
    pub votes: BTreeMap<Address, bool>,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeResult {
    /// The committee disagreed with the validator: the validator is slashed, the challenger paid.
    Upheld,
    /// The committee agreed with the validator: the deposit goes to the validator.
    Rejected,
    /// No majority voted: the deposit is returned.
    Void,
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
    /// A wrong challenger's deposit, paid to the validator it accused.
    ChallengeForfeit,
    /// A void challenge's deposit back.
    ChallengeReturned,
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
    ReportNotRevealed,
    LostChallenge,
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
            TaskStatus::Active => Phase::Resolution,
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(self.status, TaskStatus::Active)
    }

    /// Funds this task holds in escrow: the bounty while active, plus challenge deposits.
    pub fn escrow(&self) -> Amount {
        if !self.is_active() {
            return Amount::ZERO;
        }
        let deposits: u64 = self.challenges.iter().map(|c| c.deposit.0).sum();
        Amount(self.bounty.0 + deposits)
    }
}

/// The last applied block.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Tip {
    pub height: Height,
    /// Hash of the last block's header (the genesis hash at height 0).
    pub hash: Hash,
    pub time_ms: u64,
}

/// The whole ledger state.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct State {
    pub chain_id: String,
    pub params: Params,
    pub tip: Tip,
    pub accounts: BTreeMap<Address, Account>,
    pub stakes: BTreeMap<(Address, Role), Stake>,
    pub tasks: BTreeMap<TaskId, Task>,
    pub reputation: BTreeMap<Address, Reputation>,
    pub coordinators: Vec<Coordinator>,
    pub supply: Supply,
}

impl State {
    /// The state at height 0. The genesis must have been validated (as `Genesis::from_yaml` does).
    pub fn from_genesis(g: &Genesis) -> State {
        let mut accounts = BTreeMap::new();
        for b in &g.balances {
            accounts.insert(
                b.address,
                Account {
                    balance: b.amount,
                    nonce: 0,
                },
            );
        }
        let mut stakes = BTreeMap::new();
        for s in &g.stakes {
            stakes.insert(
                (s.address, s.role),
                Stake {
                    bonded: s.amount,
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
            },
            accounts,
            stakes,
            tasks: BTreeMap::new(),
            reputation: BTreeMap::new(),
            coordinators: g.coordinators.clone(),
            supply: Supply {
                genesis: g.total_supply().expect("validated genesis"),
                minted: Amount::ZERO,
                burned: Amount::ZERO,
            },
        }
    }

    /// The state root: SHA-256 over the canonical encoding of everything except the tip's block
    /// hash (a block's header holds the state root, so the root cannot include that header's
    /// hash). The destructuring is exhaustive: a new field will not compile until it is
    /// either hashed here or deliberately left out.
    pub fn state_root(&self) -> Hash {
        let State {
            chain_id,
            params,
            tip:
                Tip {
                    height,
                    hash: _,
                    time_ms,
                },
            accounts,
            stakes,
            tasks,
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
                accounts,
                stakes,
                tasks,
                reputation,
                coordinators,
                supply,
            ),
        )
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
