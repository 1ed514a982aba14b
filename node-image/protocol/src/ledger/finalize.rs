//! Finalization: resolve challenges, judge claims by a quorum of their assigned validators, pick
//! the winner, pay the bounty, the mining reward and the validators, settle every reservation,
//! slash what is provably bad, and move the task out of the active set.
//!
//! All arithmetic is on integers. The economic rules, in the order they apply over a task's life:
//!
//! **Costs that cannot be avoided.** Every transaction pays at least `tx_fee`, burned (not paid
//! to the proposer: a proposer could otherwise fill its own blocks at no cost). Submitting a task
//! burns `task_burn` of its bounty on top of the escrowed bounty. Committing a claim escrows
//! `max(claim_deposit, ⌈bounty / max_claims_per_task⌉)`: back when the claim is revealed, burned
//! when it is not, so filling every claim slot without revealing burns about the bounty.
//!
//! **Collateral.** A claim reserves `max(bounty, min_miner_bond)` of the miner's bonded stake; a
//! validation assignment reserves `max(ceil(bounty / q), min_validator_bond)` of the
//! validator's, where `q = floor(v / 2) + 1` is the quorum of the `v = validators_per_claim`
//! validators. Reserved stake cannot be unbonded until its task ends (unbonding takes only free
//! stake), and matured unbondings are released only after the block's finalizations, so stake
//! never leaves before its slash. A task that cannot reserve `v` validators gets fewer.
//!
//! 1. Challenges are committed (`H(challenger ‖ dispute ‖ salt)`, so nobody can copy one and take
//!    its reward) and revealed in windows of their own. Each escrows `challenge_deposit × 2^n`,
//!    `n` being the challenges the task already has, so slots cannot be squatted cheaply; an
//!    unrevealed one burns its deposit, and a later dispute of a fact already disputed by an
//!    earlier commitment gets only the base deposit back and no committee. A validator of the
//!    disputed claim cannot challenge it. The facts a report states can be disputed: a
//!    segment's replay, `W_0`, the final model, and (for a report that judged the claim valid)
//!    the metric. Artifact availability cannot — the miner controls it, so a later committee
//!    would judge the miner's choice — and a report that found the artifacts unavailable
//!    states nothing else. Each disputed fact gets a committee of `v` validators drawn from
//!    the beacon (never the client, a claimant, the challenger or any validator of the task),
//!    each seat reserving a validator's assignment collateral; members commit and then reveal
//!    their votes. A quorum `q` of the committee's `v` seats decides. *Upheld*: every
//!    validator of the claim that stated the fact the same way as the disputed report (for
//!    the metric, the disputed validator alone) loses that assignment's whole collateral and
//!    its report is discarded; the matching voters share `committee_reward` of the deposit,
//!    the challenger gets the rest of its deposit back plus `challenger_reward` of the
//!    disputed validator's own loss, and everything else is burned (so challenging one's own
//!    validator always loses); a fact reported passed that is not proves the claim
//!    fraudulent. *Rejected*: the matching voters share `committee_reward` of the deposit and
//!    the rest is burned — voters earn the same whichever way they vote. *No quorum*: the deposit is returned. Members who
//!    voted against a decided outcome, or did not vote, lose `validator_slash` of their seat's
//!    collateral (for a void challenge only those who did not vote).
//! 2. A revealed claim is *decided* when `q` of its counted reports agree, or fraud is proven:
//!    valid with `q` valid reports (and no fraud), invalid with `q` invalid reports or fraud.
//!    Anything else — no validators, silent validators, a tie — is *undecided*: the claim is
//!    neither paid nor slashed. A valid claim's metric is the conservative median of its valid
//!    reports (the lower middle for accuracy, the upper middle for loss).
//! 3. The winner is the valid claim with the best metric; ties go to the earliest commitment.
//! 4. Validators are paid for honest work whether or not there is a winner: `validator_share`
//!    of the bounty is split among the reports that match their decided claims' outcomes (one
//!    share per matching report, rounded down). Reports on undecided claims earn nothing.
//! 5. The winner gets the rest of the bounty plus the mining reward, `mint_rate` of the bounty
//!    (new supply, at most `max_mint_per_block` for all tasks finalized in a block). Because
//!    `mint_rate <= task_burn`, a task never mints more than it burned: a client that posts a
//!    task and wins it with its own second key (even with its own validators) ends with
//!    `mint - burn - fees < 0`. Without a winner the rest of the bounty returns to the client
//!    when every revealed claim was decided invalid (or none was revealed); when some claim
//!    could not be decided it is burned, so a client cannot have the work revealed and take
//!    its bounty back by posting where too few validators can be assigned.
//! 6. A miner whose claim is decided invalid loses the claim's whole collateral (at least the
//!    bounty it tried to win). An assigned validator that committed no report, or committed and
//!    never revealed, loses `validator_slash` of the assignment's collateral. Every other
//!    reservation is released whole. Slashes not paid to a challenger are burned.
//! 7. The task leaves the active set; its outcome stays in `State::ended` for the block and in
//!    every node's store.

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::Address;
use crate::state::{
    ChallengeResult, ClaimOutcome, Outcome, Payout, PayoutKind, Slash, SlashReason, State, Task,
    TaskStatus,
};
use crate::tx::{Role, TaskId, Verdict};
use crate::units::{Amount, Fixed, Height};

use super::accounts::settle_reservation;

/// Money moves decided by finalization, applied in one place at the end.
#[derive(Default)]
struct Settlement {
    payouts: Vec<Payout>,
    slashes: Vec<Slash>,
    burned: Amount,
    minted: Amount,
}

impl Settlement {
    fn pay(&mut self, to: Address, amount: Amount, kind: PayoutKind) {
        if amount > Amount::ZERO {
            self.payouts.push(Payout { to, amount, kind });
        }
    }

    /// End `who`'s reservation of `collateral`, taking `slash` of it; record and return what was
    /// taken (the caller decides whether it is burned).
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        state: &mut State,
        who: Address,
        role: Role,
        collateral: Amount,
        slash: Amount,
        reason: SlashReason,
    ) -> Amount {
        let taken = settle_reservation(state, who, role, collateral, slash);
        if taken > Amount::ZERO {
            self.slashes.push(Slash {
                who,
                role,
                amount: taken,
                reason,
            });
        }
        taken
    }

    fn burn(&mut self, amount: Amount) {
        self.burned = Amount(self.burned.0 + amount.0);
    }
}

/// Finalize task `id` at `height`. `mint_budget` is what the block may still mint; the mint
/// paid here is taken from it.
pub(super) fn finalize(state: &mut State, id: &TaskId, height: Height, mint_budget: &mut Amount) {
    let task = state.tasks.remove(id).expect("finalizing an active task");
    let mut settle = Settlement::default();

    let (challenges, lost) = resolve_challenges(state, &task, &mut settle);
    let claims = judge_claims(state, &task, &lost);
    settle_collateral(state, &task, &claims, &lost, &mut settle);

    let winner = claims
        .iter()
        .filter(|c| c.valid)
        .min_by(|a, b| {
            let (ma, mb) = (a.median_metric, b.median_metric);
            let better = if task.spec.metric.higher_is_better() {
                mb.cmp(&ma)
            } else {
                ma.cmp(&mb)
            };
            better.then(
                task.claims[&a.miner]
                    .committed_at
                    .cmp(&task.claims[&b.miner].committed_at),
            )
        })
        .map(|c| (c.miner, c.median_metric));

    let paid = pay_validators(state, &task, &claims, &lost, &mut settle);
    let rest = Amount(task.bounty.0 - paid.0);
    match winner {
        Some((miner, _)) => {
            settle.pay(miner, rest, PayoutKind::Bounty);
            let room = u64::MAX - (state.supply.genesis.0 + state.supply.minted.0);
            let mint = state
                .params
                .mint_rate
                .of(task.bounty)
                .min(*mint_budget)
                .min(Amount(room));
            *mint_budget = Amount(mint_budget.0 - mint.0);
            settle.pay(miner, mint, PayoutKind::Mint);
            settle.minted = mint;
            state.reputation.get_mut_or_default(miner).tasks_won += 1;
        }
        // Every revealed claim was judged invalid (or none was revealed): the client gets the
        // rest back. A claim nobody could judge burns it instead, so that a client cannot
        // collect the miners' revealed work and its bounty too.
        None if claims.iter().all(|c| c.decided) => {
            settle.pay(task.client, rest, PayoutKind::Refund)
        }
        None => settle.burn(rest),
    }

    for (miner, c) in &task.claims {
        if c.claim.is_some() {
            settle.pay(*miner, c.deposit, PayoutKind::DepositReturned);
        } else {
            settle.burn(c.deposit);
        }
    }

    for p in &settle.payouts {
        state.credit(p.to, p.amount);
    }
    state.supply.minted = Amount(state.supply.minted.0 + settle.minted.0);
    state.supply.burned = Amount(state.supply.burned.0 + settle.burned.0);
    let mut task = task;
    task.status = TaskStatus::Finalized(Outcome {
        finalized_at: height,
        winner: winner.map(|w| w.0),
        winning_metric: winner.and_then(|w| w.1),
        claims,
        challenges,
        payouts: settle.payouts,
        slashes: settle.slashes,
        minted: settle.minted,
        burned: settle.burned,
    });
    state.ended.push(task);
}

/// What the challenges decided.
struct Lost {
    /// (miner, validator) -> the upheld challenges that proved this validator wrong.
    assignments: BTreeMap<(Address, Address), Vec<usize>>,
    fraud: BTreeSet<Address>,
}

impl Lost {
    /// The upheld challenges whose disputed validator is `validator` on `miner`'s claim (not
    /// the ones that only co-slashed it).
    fn aimed_at(&self, task: &Task, miner: &Address, validator: &Address) -> Vec<usize> {
        self.assignments
            .get(&(*miner, *validator))
            .into_iter()
            .flatten()
            .copied()
            .filter(|i| {
                task.challenges[*i]
                    .dispute
                    .is_some_and(|d| d.validator == *validator)
            })
            .collect()
    }
}

/// Rule 1: decide every challenge, pay or burn the deposits, and settle the committee seats.
/// What an upheld challenge takes from the validators it proved wrong is paid out when their
/// collateral is settled.
fn resolve_challenges(
    state: &mut State,
    task: &Task,
    settle: &mut Settlement,
) -> (Vec<ChallengeResult>, Lost) {
    let quorum = state.params.quorum() as usize;
    let mut results = Vec::new();
    let mut lost = Lost {
        assignments: BTreeMap::new(),
        fraud: BTreeSet::new(),
    };
    for (i, c) in task.challenges.iter().enumerate() {
        let Some(d) = c.dispute else {
            settle.burn(c.deposit);
            results.push(ChallengeResult::Unrevealed);
            continue;
        };
        if !task.is_primary_challenge(i) {
            // Back only the base deposit: the doubling surcharge of a duplicate is burned, so
            // slots cannot be filled with copies of one cheap dispute.
            let back = c.deposit.min(state.params.challenge_deposit);
            settle.pay(c.challenger, back, PayoutKind::ChallengeReturned);
            settle.burn(Amount(c.deposit.0 - back.0));
            results.push(ChallengeResult::Duplicate);
            continue;
        }
        let voted = |want: bool| -> Vec<Address> {
            c.votes
                .iter()
                .filter(|(_, v)| v.upheld == Some(want))
                .map(|(m, _)| *m)
                .collect()
        };
        let (up, down) = (voted(true), voted(false));
        // A quorum of the committee's full size decides, never a few votes cast.
        let (result, matching) = if up.len() >= quorum {
            (ChallengeResult::Upheld, up)
        } else if down.len() >= quorum {
            (ChallengeResult::Rejected, down)
        } else {
            (ChallengeResult::Void, Vec::new())
        };
        match result {
            ChallengeResult::Upheld => {
                // Voters get `committee_reward` of the deposit whichever way they voted; the
                // challenger the rest of it back (and its reward from the loss, later).
                let to_voters = state.params.committee_reward.of(c.deposit);
                let paid = pay_equally(settle, &matching, to_voters, PayoutKind::CommitteeReward);
                settle.pay(
                    c.challenger,
                    Amount(c.deposit.0 - paid.0),
                    PayoutKind::ChallengeWon,
                );
                let claim = &task.claims[&d.miner];
                let disputed = claim.reports[&d.validator]
                    .report
                    .as_ref()
                    .expect("challenges dispute revealed reports");
                let stated = d.fact.stated_in(disputed);
                // Every validator of this claim that stated the fact the same way is as wrong
                // as the one disputed (the metric is a value: only the disputed report).
                for (v, r) in &claim.reports {
                    let Some(rep) = &r.report else { continue };
                    let same =
                        *v == d.validator || (stated.is_some() && d.fact.stated_in(rep) == stated);
                    if same {
                        lost.assignments.entry((d.miner, *v)).or_default().push(i);
                    }
                }
                // The fact was reported passed and is not: the claim fails it.
                if stated == Some(true) {
                    lost.fraud.insert(d.miner);
                }
            }
            ChallengeResult::Rejected => {
                let pool = state.params.committee_reward.of(c.deposit);
                let paid = pay_equally(settle, &matching, pool, PayoutKind::CommitteeReward);
                settle.burn(Amount(c.deposit.0 - paid.0));
            }
            _ => settle.pay(c.challenger, c.deposit, PayoutKind::ChallengeReturned),
        }
        // Seats: a decided challenge slashes the members who did not vote with its outcome; a
        // void one those who did not vote at all.
        for seat in &c.committee {
            let vote = c.votes.get(&seat.member).and_then(|v| v.upheld);
            let at_fault = match result {
                ChallengeResult::Void => vote.is_none(),
                _ => !matching.contains(&seat.member),
            };
            let slash = if at_fault {
                state.params.validator_slash.of(seat.collateral)
            } else {
                Amount::ZERO
            };
            let taken = settle.settle(
                state,
                seat.member,
                Role::Validator,
                seat.collateral,
                slash,
                SlashReason::CommitteeVote,
            );
            settle.burn(taken);
        }
        results.push(result);
    }
    (results, lost)
}

/// Split `pool` equally among `to` (rounded down); returns what was paid.
fn pay_equally(settle: &mut Settlement, to: &[Address], pool: Amount, kind: PayoutKind) -> Amount {
    if to.is_empty() {
        return Amount::ZERO;
    }
    let each = pool.mul_div(1, to.len() as u64);
    for a in to {
        settle.pay(*a, each, kind);
    }
    Amount(each.0 * to.len() as u64)
}

/// The reports that count for `miner`'s claim: revealed, and not discarded by a challenge.
fn counted_reports<'a>(
    task: &'a Task,
    miner: &'a Address,
    lost: &'a Lost,
) -> impl Iterator<Item = (Address, Verdict, Fixed)> + 'a {
    task.claims[miner]
        .reports
        .iter()
        .filter(move |(v, _)| !lost.assignments.contains_key(&(*miner, **v)))
        .filter_map(|(v, r)| r.report.as_ref().map(|rep| (*v, rep.verdict, rep.metric)))
}

/// Rule 2 (and the reputation counters): judge each revealed claim.
fn judge_claims(state: &mut State, task: &Task, lost: &Lost) -> Vec<ClaimOutcome> {
    let quorum = state.params.quorum();
    let mut outcomes = Vec::new();
    for (miner, entry) in &task.claims {
        if entry.claim.is_none() {
            continue;
        }
        let counted: Vec<_> = counted_reports(task, miner, lost).collect();
        let mut metrics: Vec<Fixed> = counted
            .iter()
            .filter(|(_, verdict, _)| *verdict == Verdict::Valid)
            .map(|(_, _, m)| *m)
            .collect();
        let valid_reports = metrics.len() as u32;
        let invalid_reports = counted.len() as u32 - valid_reports;
        let fraud_proven = lost.fraud.contains(miner);
        let valid = !fraud_proven && valid_reports >= quorum;
        let decided = valid || fraud_proven || invalid_reports >= quorum;
        metrics.sort();
        let median_metric =
            valid.then(|| conservative_median(&metrics, task.spec.metric.higher_is_better()));

        if decided {
            for (v, verdict, _) in &counted {
                if (*verdict == Verdict::Valid) != valid {
                    state
                        .reputation
                        .get_mut_or_default(*v)
                        .reports_against_majority += 1;
                }
            }
        }
        for a in &entry.assigned {
            if !matches!(entry.reports.get(&a.validator), Some(r) if r.report.is_some()) {
                state
                    .reputation
                    .get_mut_or_default(a.validator)
                    .reports_missed += 1;
            }
        }
        if decided && !valid {
            state.reputation.get_mut_or_default(*miner).claims_rejected += 1;
        }
        outcomes.push(ClaimOutcome {
            miner: *miner,
            decided,
            valid,
            valid_reports,
            invalid_reports,
            median_metric,
            fraud_proven,
        });
    }
    outcomes
}

/// Rule 6 (and the upheld challenges of rule 1): end every reservation the task holds.
fn settle_collateral(
    state: &mut State,
    task: &Task,
    claims: &[ClaimOutcome],
    lost: &Lost,
    settle: &mut Settlement,
) {
    let rejected: BTreeSet<Address> = claims
        .iter()
        .filter(|c| c.decided && !c.valid)
        .map(|c| c.miner)
        .collect();
    for (miner, entry) in &task.claims {
        let slash = if rejected.contains(miner) {
            entry.collateral
        } else {
            Amount::ZERO
        };
        let taken = settle.settle(
            state,
            *miner,
            Role::Miner,
            entry.collateral,
            slash,
            SlashReason::InvalidClaim,
        );
        settle.burn(taken);

        for a in &entry.assigned {
            let report = entry.reports.get(&a.validator);
            let upheld = lost.assignments.get(&(*miner, a.validator));
            let (slash, reason) = match (upheld, report) {
                (Some(_), _) => (a.collateral, SlashReason::LostChallenge),
                (None, None) => (
                    state.params.validator_slash.of(a.collateral),
                    SlashReason::ReportNotCommitted,
                ),
                (None, Some(r)) if r.report.is_none() => (
                    state.params.validator_slash.of(a.collateral),
                    SlashReason::ReportNotRevealed,
                ),
                (None, Some(_)) => (Amount::ZERO, SlashReason::ReportNotRevealed),
            };
            let taken = settle.settle(
                state,
                a.validator,
                Role::Validator,
                a.collateral,
                slash,
                reason,
            );
            if upheld.is_none() {
                settle.burn(taken);
                continue;
            }
            // Only the disputed validator's own loss pays: its challengers share
            // `challenger_reward` of it. What validators co-slashed for stating the same fact
            // lose is burned whole, so a validator cannot profit by challenging a fellow one.
            let aimed = lost.aimed_at(task, miner, &a.validator);
            let mut paid = Amount::ZERO;
            if !aimed.is_empty() {
                let n = aimed.len() as u64;
                for &i in &aimed {
                    let part = taken.mul_div(1, n);
                    let to_challenger = state.params.challenger_reward.of(part);
                    settle.pay(
                        task.challenges[i].challenger,
                        to_challenger,
                        PayoutKind::ChallengeWon,
                    );
                    paid = Amount(paid.0 + to_challenger.0);
                }
            }
            settle.burn(Amount(taken.0 - paid.0));
        }
    }
}

/// The middle of sorted `values`; for an even count the worse of the two middle values.
fn conservative_median(sorted: &[Fixed], higher_is_better: bool) -> Fixed {
    let n = sorted.len();
    debug_assert!(n > 0, "a valid claim has at least one valid report");
    if higher_is_better {
        sorted[(n - 1) / 2]
    } else {
        sorted[n / 2]
    }
}

/// Rule 4: pay the validators whose reports matched their decided claims; returns the total.
fn pay_validators(
    state: &State,
    task: &Task,
    claims: &[ClaimOutcome],
    lost: &Lost,
    settle: &mut Settlement,
) -> Amount {
    let mut matched: BTreeMap<Address, u64> = BTreeMap::new();
    for outcome in claims.iter().filter(|c| c.decided) {
        for (v, verdict, _) in counted_reports(task, &outcome.miner, lost) {
            if (verdict == Verdict::Valid) == outcome.valid {
                *matched.entry(v).or_default() += 1;
            }
        }
    }
    let total: u64 = matched.values().sum();
    if total == 0 {
        return Amount::ZERO;
    }
    let pool = state.params.validator_share.of(task.bounty);
    let mut paid = Amount::ZERO;
    for (v, n) in &matched {
        let share = pool.mul_div(*n, total);
        paid = Amount(paid.0 + share.0);
        settle.pay(*v, share, PayoutKind::Validation);
    }
    paid
}
