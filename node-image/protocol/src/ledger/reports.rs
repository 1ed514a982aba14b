//! Validator and verifier transactions: report commit and reveal, challenges and committee votes.

use std::collections::BTreeMap;

use crate::crypto::Address;
use crate::error::TxError;
use crate::hash::Hash;
use crate::state::{ChallengeEntry, ClaimEntry, Phase, ReportEntry, State, Task};
use crate::tx::{Report, TaskId, report_commitment};

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
    if !entry.assigned.contains(&validator) {
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
    let indices: Vec<u32> = report.segments.iter().map(|s| s.index).collect();
    if indices != entry.segments {
        return Err(TxError::WrongSegments {
            expected: entry.segments.clone(),
        });
    }
    if !report.is_consistent() {
        return Err(TxError::InconsistentReport);
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

#[allow(clippy::too_many_arguments)]
pub(super) fn challenge(
    state: &mut State,
    ctx: &TxCtx,
    challenger: Address,
    id: &TaskId,
    miner: &Address,
    validator: &Address,
    segment: u32,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::Challenge, "challenge")?;
    if challenger == *validator {
        return Err(TxError::SelfChallenge);
    }
    let entry = revealed_claim(task, miner)?;
    let report = entry
        .reports
        .get(validator)
        .and_then(|r| r.report.as_ref())
        .ok_or(TxError::UnknownReport {
            validator: *validator,
            miner: *miner,
        })?;
    if !report.segments.iter().any(|s| s.index == segment) {
        return Err(TxError::SegmentNotReported(segment));
    }
    let duplicate = task
        .challenges
        .iter()
        .any(|c| c.miner == *miner && c.validator == *validator && c.segment == segment);
    if duplicate {
        return Err(TxError::Duplicate("challenge"));
    }
    let max = state.params.max_challenges_per_task;
    if task.challenges.len() >= max as usize {
        return Err(TxError::TooManyChallenges { max });
    }
    let deposit = state.params.challenge_deposit;
    state.require_funds(&challenger, deposit)?;
    state.debit(challenger, deposit);
    let task = state.tasks.get_mut(id).expect("checked above");
    task.challenges.push(ChallengeEntry {
        challenger,
        miner: *miner,
        validator: *validator,
        segment,
        deposit,
        committee: Vec::new(),
        votes: BTreeMap::new(),
    });
    Ok(())
}

pub(super) fn vote(
    state: &mut State,
    ctx: &TxCtx,
    member: Address,
    id: &TaskId,
    index: u32,
    segment_ok: bool,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::Resolution, "challenge_vote")?;
    let ch = task
        .challenges
        .get(index as usize)
        .ok_or(TxError::UnknownChallenge(index))?;
    if !ch.committee.contains(&member) {
        return Err(TxError::NotOnCommittee(member));
    }
    if ch.votes.contains_key(&member) {
        return Err(TxError::Duplicate("challenge vote"));
    }
    let task = state.tasks.get_mut(id).expect("checked above");
    task.challenges[index as usize]
        .votes
        .insert(member, segment_ok);
    Ok(())
}

fn claim_mut<'a>(state: &'a mut State, id: &TaskId, miner: &Address) -> &'a mut ClaimEntry {
    state
        .tasks
        .get_mut(id)
        .and_then(|t| t.claims.get_mut(miner))
        .expect("checked by the caller")
}
