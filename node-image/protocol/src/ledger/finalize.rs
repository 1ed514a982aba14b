//! Finalization: resolve challenges, judge claims by their validators' majority, pick the
//! winner, pay the bounty, the mint and the validators, and slash what is provably bad.
//!
//! All arithmetic is on integers. The rules, in order:
//! 1. A challenge is upheld when a strict majority of its committee's votes disagrees with the
//!    challenged validator's segment result: that validator is slashed, its report is discarded,
//!    and the challenger gets its deposit back plus `challenger_reward` of the slash. When the
//!    majority agrees with the validator, the deposit goes to the validator. Without a majority
//!    the deposit is returned. A majority saying the segment does not replay proves the claim
//!    fraudulent.
//! 2. A revealed claim is valid when it is not proven fraudulent and a strict majority of its
//!    counted reports say valid. Its metric is the conservative median of the valid reports'
//!    metrics (the lower middle for accuracy, the upper middle for loss).
//! 3. The winner is the valid claim with the best metric; ties go to the earliest commitment.
//! 4. With a winner: validators whose verdict matched their claim's outcome share
//!    `validator_share` of the bounty in proportion to their matching reports (rounded down);
//!    the winner gets the rest, including the rounding remainder, plus `mint_per_task`.
//!    Without a winner the whole bounty returns to the client and nothing is minted.
//! 5. Miners of invalid claims lose `miner_slash` of their miner stake; validators who committed
//!    a report and never revealed it lose `validator_slash` of theirs. Slashes not paid to a
//!    challenger are burned.

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::Address;
use crate::state::{
    ChallengeResult, ClaimOutcome, Outcome, Payout, PayoutKind, Slash, SlashReason, State, Task,
    TaskStatus,
};
use crate::tx::{Role, TaskId, Verdict};
use crate::units::{Amount, Fixed, Height};

use super::accounts::slash;

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

    /// Slash and record; returns the amount taken (the caller decides whether it is burned).
    fn slash(
        &mut self,
        state: &mut State,
        who: Address,
        role: Role,
        reason: SlashReason,
    ) -> Amount {
        let fraction = match role {
            Role::Miner => state.params.miner_slash,
            Role::Validator => state.params.validator_slash,
        };
        let amount = slash(state, who, role, fraction);
        if amount > Amount::ZERO {
            self.slashes.push(Slash {
                who,
                role,
                amount,
                reason,
            });
        }
        amount
    }

    fn burn(&mut self, amount: Amount) {
        self.burned = Amount(self.burned.0 + amount.0);
    }
}

pub(super) fn finalize(state: &mut State, id: &TaskId, height: Height) {
    let task = state.tasks[id].clone();
    let mut settle = Settlement::default();

    let (challenges, discarded, fraud) = resolve_challenges(state, &task, &mut settle);
    let claims = judge_claims(state, &task, &discarded, &fraud, &mut settle);

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

    match winner {
        Some((miner, _)) => {
            pay_winner_and_validators(state, &task, miner, &claims, &discarded, &mut settle)
        }
        None => settle.pay(task.client, task.bounty, PayoutKind::Refund),
    }

    for p in &settle.payouts {
        state.credit(p.to, p.amount);
    }
    state.supply.minted = Amount(state.supply.minted.0 + settle.minted.0);
    state.supply.burned = Amount(state.supply.burned.0 + settle.burned.0);
    if let Some((miner, _)) = winner {
        state.reputation.entry(miner).or_default().tasks_won += 1;
    }
    let t = state
        .tasks
        .get_mut(id)
        .expect("finalizing an existing task");
    t.status = TaskStatus::Finalized(Outcome {
        finalized_at: height,
        winner: winner.map(|w| w.0),
        winning_metric: winner.and_then(|w| w.1),
        claims,
        challenges,
        payouts: settle.payouts,
        slashes: settle.slashes,
    });
}

/// Rule 1. Returns each challenge's result, the reports discarded (miner, validator), and the
/// claims proven fraudulent.
fn resolve_challenges(
    state: &mut State,
    task: &Task,
    settle: &mut Settlement,
) -> (
    Vec<ChallengeResult>,
    BTreeSet<(Address, Address)>,
    BTreeSet<Address>,
) {
    let mut results = Vec::new();
    let mut discarded = BTreeSet::new();
    let mut fraud = BTreeSet::new();
    for c in &task.challenges {
        let yes = c.votes.values().filter(|ok| **ok).count();
        let no = c.votes.len() - yes;
        let committee_says_ok = match yes.cmp(&no) {
            std::cmp::Ordering::Greater => Some(true),
            std::cmp::Ordering::Less => Some(false),
            std::cmp::Ordering::Equal => None,
        };
        let reported_ok = task.claims[&c.miner].reports[&c.validator]
            .report
            .as_ref()
            .and_then(|r| r.segments.iter().find(|s| s.index == c.segment))
            .map(|s| s.ok)
            .expect("challenges target revealed segment results");
        if committee_says_ok == Some(false) {
            fraud.insert(c.miner);
        }
        let result = match committee_says_ok {
            None => {
                settle.pay(c.challenger, c.deposit, PayoutKind::ChallengeReturned);
                ChallengeResult::Void
            }
            Some(ok) if ok == reported_ok => {
                settle.pay(c.validator, c.deposit, PayoutKind::ChallengeForfeit);
                ChallengeResult::Rejected
            }
            Some(_) => {
                discarded.insert((c.miner, c.validator));
                let taken = settle.slash(
                    state,
                    c.validator,
                    Role::Validator,
                    SlashReason::LostChallenge,
                );
                let reward = state.params.challenger_reward.of(taken);
                settle.pay(
                    c.challenger,
                    Amount(c.deposit.0 + reward.0),
                    PayoutKind::ChallengeWon,
                );
                settle.burn(Amount(taken.0 - reward.0));
                ChallengeResult::Upheld
            }
        };
        results.push(result);
    }
    (results, discarded, fraud)
}

/// Rules 2 and 5 (and the reputation counters): judge each revealed claim.
fn judge_claims(
    state: &mut State,
    task: &Task,
    discarded: &BTreeSet<(Address, Address)>,
    fraud: &BTreeSet<Address>,
    settle: &mut Settlement,
) -> Vec<ClaimOutcome> {
    let mut outcomes = Vec::new();
    for (miner, entry) in &task.claims {
        if entry.claim.is_none() {
            continue;
        }
        let counted: Vec<(Address, Verdict, Fixed)> = entry
            .reports
            .iter()
            .filter(|(v, _)| !discarded.contains(&(*miner, **v)))
            .filter_map(|(v, r)| r.report.as_ref().map(|rep| (*v, rep.verdict, rep.metric)))
            .collect();
        let mut metrics: Vec<Fixed> = counted
            .iter()
            .filter(|(_, verdict, _)| *verdict == Verdict::Valid)
            .map(|(_, _, m)| *m)
            .collect();
        let valid_reports = metrics.len() as u32;
        let invalid_reports = counted.len() as u32 - valid_reports;
        let fraud_proven = fraud.contains(miner);
        let valid = !fraud_proven && valid_reports > invalid_reports;
        metrics.sort();
        let median_metric =
            valid.then(|| conservative_median(&metrics, task.spec.metric.higher_is_better()));

        for (v, verdict, _) in &counted {
            if (*verdict == Verdict::Valid) != valid {
                state
                    .reputation
                    .entry(*v)
                    .or_default()
                    .reports_against_majority += 1;
            }
        }
        for v in &entry.assigned {
            match entry.reports.get(v) {
                Some(r) if r.report.is_some() => {}
                Some(_) => {
                    state.reputation.entry(*v).or_default().reports_missed += 1;
                    let taken =
                        settle.slash(state, *v, Role::Validator, SlashReason::ReportNotRevealed);
                    settle.burn(taken);
                }
                None => state.reputation.entry(*v).or_default().reports_missed += 1,
            }
        }
        if !valid {
            state.reputation.entry(*miner).or_default().claims_rejected += 1;
            let taken = settle.slash(state, *miner, Role::Miner, SlashReason::InvalidClaim);
            settle.burn(taken);
        }
        outcomes.push(ClaimOutcome {
            miner: *miner,
            valid,
            valid_reports,
            invalid_reports,
            median_metric,
            fraud_proven,
        });
    }
    outcomes
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

/// Rule 4 with a winner.
fn pay_winner_and_validators(
    state: &State,
    task: &Task,
    winner: Address,
    claims: &[ClaimOutcome],
    discarded: &BTreeSet<(Address, Address)>,
    settle: &mut Settlement,
) {
    // Matching reports per validator, over all claims of the task.
    let mut matched: BTreeMap<Address, u64> = BTreeMap::new();
    for outcome in claims {
        for (v, r) in &task.claims[&outcome.miner].reports {
            let Some(rep) = &r.report else { continue };
            if discarded.contains(&(outcome.miner, *v)) {
                continue;
            }
            if (rep.verdict == Verdict::Valid) == outcome.valid {
                *matched.entry(*v).or_default() += 1;
            }
        }
    }
    let total: u64 = matched.values().sum();
    let pool = state.params.validator_share.of(task.bounty);
    let mut paid = Amount::ZERO;
    // A winner's own valid reports match its outcome, so `total > 0`; the filter keeps the
    // division safe should that reasoning ever change.
    for (v, n) in matched.iter().filter(|_| total > 0) {
        let share = pool.mul_div(*n, total);
        paid = Amount(paid.0 + share.0);
        settle.pay(*v, share, PayoutKind::Validation);
    }
    settle.pay(winner, Amount(task.bounty.0 - paid.0), PayoutKind::Bounty);
    let mint = state.params.mint_per_task;
    let room = u64::MAX - (state.supply.genesis.0 + state.supply.minted.0);
    let mint = Amount(mint.0.min(room));
    settle.pay(winner, mint, PayoutKind::Mint);
    settle.minted = mint;
}
