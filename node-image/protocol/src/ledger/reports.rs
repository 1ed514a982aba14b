//! Validator and verifier transactions: report commit and reveal, challenges and committee votes.

use std::collections::BTreeMap;

use crate::crypto::Address;
use crate::error::TxError;
use crate::hash::Hash;
use crate::state::{ChallengeEntry, ClaimEntry, Phase, ReportEntry, State, Task, VoteEntry};
use crate::tx::{
    Dispute, Fact, InvalidReason, Report, TaskId, Verdict, challenge_commitment, report_commitment,
    vote_commitment,
};
use crate::units::{Amount, Fixed};

use super::TxCtx;
use super::tasks::task_in_phase;

fn revealed_claim<'a>(task: &'a Task, miner: &Address) -> Result<&'a ClaimEntry, TxError> {
    task.claims
        .get(miner)
        .filter(|c| c.claim.is_some())
        .ok_or(TxError::UnknownClaim(*miner))
}

pub(super) fn commit_report(
    state: &mut State,
    ctx: &TxCtx,
    validator: Address,
    id: &TaskId,
    miner: &Address,
    commitment: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::ReportCommit, "commit_report")?;
    let entry = revealed_claim(task, miner)?;
    if entry.assignment(&validator).is_none() {
        return Err(TxError::NotAssigned {
            validator,
            miner: *miner,
        });
    }
    if entry.reports.contains_key(&validator) {
        return Err(TxError::Duplicate("report commitment"));
    }
    let entry = claim_mut(state, id, miner);
    entry.reports.insert(
        validator,
        ReportEntry {
            commitment,
            committed_at: ctx.position(),
            report: None,
        },
    );
    Ok(())
}

pub(super) fn reveal_report(
    state: &mut State,
    ctx: &TxCtx,
    validator: Address,
    id: &TaskId,
    miner: &Address,
    report: &Report,
    salt: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::ReportReveal, "reveal_report")?;
    let entry = revealed_claim(task, miner)?;
    let committed = entry
        .reports
        .get(&validator)
        .ok_or(TxError::NoCommitment("report"))?;
    if committed.report.is_some() {
        return Err(TxError::Duplicate("report reveal"));
    }
    let expected = &entry
        .assignment(&validator)
        .expect("only assigned validators commit")
        .segments;
    let indices: Vec<u32> = report.segments.iter().map(|s| s.index).collect();
    let (sampled, extra) = indices.split_at(expected.len().min(indices.len()));
    let extra_ok = extra.len() <= crate::tx::limits::MAX_EXTRA_SEGMENTS
        && extra.windows(2).all(|w| w[0] < w[1])
        && extra
            .iter()
            .all(|i| u64::from(*i) < task.spec.segments() && !expected.contains(i));
    if sampled != expected.as_slice() || !extra_ok {
        return Err(TxError::WrongSegments {
            expected: expected.clone(),
        });
    }
    if !report.is_consistent() {
        return Err(TxError::InconsistentReport);
    }
    // Accuracy and loss are never negative; the bound keeps every view of it exact.
    if !(0..Fixed::DECIMAL_LIMIT).contains(&report.metric.0) {
        return Err(TxError::MetricOutOfRange(report.metric));
    }
    if report_commitment(id, miner, &validator, report, &salt) != committed.commitment {
        return Err(TxError::RevealMismatch("report"));
    }
    let entry = claim_mut(state, id, miner);
    entry
        .reports
        .get_mut(&validator)
        .expect("checked above")
        .report = Some(report.clone());
    Ok(())
}

/// Commit to a challenge, escrowing its deposit: `challenge_deposit × 2^n` for a task that
/// already has `n` challenges.
pub(super) fn challenge(
    state: &mut State,
    ctx: &TxCtx,
    challenger: Address,
    id: &TaskId,
    commitment: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::Challenge, "challenge")?;
    if task.challenges.iter().any(|c| c.commitment == commitment) {
        return Err(TxError::Duplicate("challenge commitment"));
    }
    let max = state.params.max_challenges_per_task;
    if task.challenges.len() >= max as usize {
        return Err(TxError::TooManyChallenges { max });
    }
    let deposit = 1u64
        .checked_shl(task.challenges.len() as u32)
        .and_then(|f| state.params.challenge_deposit.0.checked_mul(f))
        .map(Amount)
        .ok_or(TxError::Overflow)?;
    state.require_funds(&challenger, deposit)?;
    state.debit(challenger, deposit);
    let task = state.tasks.get_mut(id).expect("checked above");
    task.challenges.push(ChallengeEntry {
        challenger,
        commitment,
        committed_at: ctx.position(),
        deposit,
        dispute: None,
        committee: Vec::new(),
        votes: BTreeMap::new(),
    });
    Ok(())
}

/// Reveal what challenge `index` disputes: one fact a revealed report states.
pub(super) fn reveal_challenge(
    state: &mut State,
    ctx: &TxCtx,
    challenger: Address,
    id: &TaskId,
    index: u32,
    dispute: &Dispute,
    salt: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::ChallengeReveal, "reveal_challenge")?;
    let ch = task
        .challenges
        .get(index as usize)
        .ok_or(TxError::UnknownChallenge(index))?;
    if ch.challenger != challenger {
        return Err(TxError::NotYourChallenge {
            challenge: index,
            challenger: ch.challenger,
        });
    }
    if ch.dispute.is_some() {
        return Err(TxError::Duplicate("challenge reveal"));
    }
    if challenger == dispute.validator {
        return Err(TxError::SelfChallenge);
    }
    let entry = revealed_claim(task, &dispute.miner)?;
    // A validator of the claim could challenge a fellow validator for a fact it reported the
    // same way itself, and collect from their shared slash.
    if entry.assignment(&challenger).is_some() {
        return Err(TxError::ChallengerAssigned(challenger));
    }
    let report = entry
        .reports
        .get(&dispute.validator)
        .and_then(|r| r.report.as_ref())
        .ok_or(TxError::UnknownReport {
            validator: dispute.validator,
            miner: dispute.miner,
        })?;
    check_disputable(dispute.fact, report)?;
    if challenge_commitment(id, &challenger, dispute, &salt) != ch.commitment {
        return Err(TxError::RevealMismatch("challenge"));
    }
    let task = state.tasks.get_mut(id).expect("checked above");
    task.challenges[index as usize].dispute = Some(*dispute);
    Ok(())
}

/// Whether `fact` of `report` can be disputed. Artifact availability cannot: the miner
/// controls it, so a committee looking later would judge the miner's choice, not the
/// validator's report. A report that found the artifacts unavailable states nothing else (its
/// other fields are placeholders), and a report's metric is a fact only when it judged the
/// claim valid.
fn check_disputable(fact: Fact, report: &Report) -> Result<(), TxError> {
    let not = |why| Err(TxError::NotDisputable { fact, why });
    if fact == Fact::Artifacts {
        return not("availability is the miner's to control; a committee cannot re-check the past");
    }
    if report.verdict == Verdict::Invalid(InvalidReason::ArtifactsUnavailable) {
        return not("the report found the artifacts unavailable and states nothing else");
    }
    if fact == Fact::Metric && report.verdict != Verdict::Valid {
        return not("only a report that judged the claim valid states a metric");
    }
    if fact != Fact::Metric && fact.passed_in(report).is_none() {
        return Err(TxError::FactNotReported(fact));
    }
    Ok(())
}

/// The challenge `index`, which must have a committee seating `member`.
fn seated<'a>(task: &'a Task, index: u32, member: &Address) -> Result<&'a ChallengeEntry, TxError> {
    let ch = task
        .challenges
        .get(index as usize)
        .ok_or(TxError::UnknownChallenge(index))?;
    if !ch.committee.iter().any(|s| s.member == *member) {
        return Err(TxError::NotOnCommittee(*member));
    }
    Ok(ch)
}

pub(super) fn commit_vote(
    state: &mut State,
    ctx: &TxCtx,
    member: Address,
    id: &TaskId,
    index: u32,
    commitment: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::Vote, "commit_vote")?;
    let ch = seated(task, index, &member)?;
    if ch.votes.contains_key(&member) {
        return Err(TxError::Duplicate("vote commitment"));
    }
    let task = state.tasks.get_mut(id).expect("checked above");
    task.challenges[index as usize].votes.insert(
        member,
        VoteEntry {
            commitment,
            upheld: None,
        },
    );
    Ok(())
}

pub(super) fn reveal_vote(
    state: &mut State,
    ctx: &TxCtx,
    member: Address,
    id: &TaskId,
    index: u32,
    upheld: bool,
    salt: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::VoteReveal, "reveal_vote")?;
    let ch = seated(task, index, &member)?;
    let vote = ch.votes.get(&member).ok_or(TxError::NoCommitment("vote"))?;
    if vote.upheld.is_some() {
        return Err(TxError::Duplicate("vote reveal"));
    }
    if vote_commitment(id, index, &member, upheld, &salt) != vote.commitment {
        return Err(TxError::RevealMismatch("vote"));
    }
    let task = state.tasks.get_mut(id).expect("checked above");
    task.challenges[index as usize]
        .votes
        .get_mut(&member)
        .expect("checked above")
        .upheld = Some(upheld);
    Ok(())
}

fn claim_mut<'a>(state: &'a mut State, id: &TaskId, miner: &Address) -> &'a mut ClaimEntry {
    state
        .tasks
        .get_mut(id)
        .and_then(|t| t.claims.get_mut(miner))
        .expect("checked by the caller")
}
