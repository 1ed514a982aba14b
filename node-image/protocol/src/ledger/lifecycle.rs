//! Height-driven task transitions, run at the start of each block: validator assignment when the
//! reveal window closes, failure when the eval set is withheld, committees when the challenge
//! window closes, and finalization.

use crate::crypto::Address;
use crate::hash::Hash;
use crate::sampling;
use crate::state::{FailReason, State, TaskStatus};
use crate::tx::{Role, TaskId};
use crate::units::{Amount, Height};

use super::finalize::finalize;

/// Move every active task whose phase ends just before `height`. `beacon` is the hash of the
/// previous block, unknown to anyone before that block was decided.
pub(super) fn advance_tasks(state: &mut State, height: Height, beacon: &Hash) {
    let due: Vec<TaskId> = state
        .tasks
        .values()
        .filter(|t| t.is_active())
        .filter(|t| {
            let s = &t.schedule;
            [s.reveal_end, s.eval_end, s.challenge_end, s.resolution_end].contains(&(height - 1))
        })
        .map(|t| t.id)
        .collect();
    for id in due {
        advance(state, &id, height, beacon);
    }
}

fn advance(state: &mut State, id: &TaskId, height: Height, beacon: &Hash) {
    let task = &state.tasks[id];
    let s = task.schedule.clone();
    let closed = height - 1;
    if closed == s.reveal_end {
        if task.claims.values().any(|c| c.claim.is_some()) {
            assign(state, id, beacon);
        } else {
            finalize(state, id, height);
        }
    } else if closed == s.eval_end {
        if task.eval_set.is_none() {
            fail(state, id, height, FailReason::EvalSetNotRevealed);
        }
    } else if closed == s.challenge_end {
        if task.challenges.is_empty() {
            finalize(state, id, height);
        } else {
            form_committees(state, id, beacon);
        }
    } else if closed == s.resolution_end {
        finalize(state, id, height);
    }
}

/// Bonded validators at or above the minimum bond, ascending, without `exclude`.
fn eligible_validators(state: &State, exclude: &[Address]) -> Vec<Address> {
    state
        .stakes
        .iter()
        .filter(|((a, role), s)| {
            *role == Role::Validator
                && s.bonded >= state.params.min_validator_bond
                && !exclude.contains(a)
        })
        .map(|((a, _), _)| *a)
        .collect()
}

/// Assign `v` validators and sample `s` segments for each revealed claim.
fn assign(state: &mut State, id: &TaskId, beacon: &Hash) {
    let (v, s) = (
        state.params.validators_per_claim,
        state.params.segments_per_claim,
    );
    let task = &state.tasks[id];
    let segments = task.spec.segments();
    let mut plan = Vec::new();
    for (miner, entry) in &task.claims {
        if entry.claim.is_none() {
            continue;
        }
        // Never the miner itself, and never the client, who has a stake in the outcome.
        let eligible = eligible_validators(state, &[*miner, task.client]);
        let validators = sampling::assign_validators(beacon, id, miner, &eligible, v);
        let segs = sampling::sample_segments(beacon, id, miner, segments, s);
        plan.push((*miner, validators, segs));
    }
    let task = state.tasks.get_mut(id).expect("due task exists");
    for (miner, validators, segs) in plan {
        let entry = task.claims.get_mut(&miner).expect("planned from this task");
        entry.assigned = validators;
        entry.segments = segs;
    }
}

/// Choose a committee for each challenge: bonded validators other than the miner, the
/// challenged validator and the challenger.
fn form_committees(state: &mut State, id: &TaskId, beacon: &Hash) {
    let v = state.params.validators_per_claim;
    let task = &state.tasks[id];
    let committees: Vec<Vec<Address>> = task
        .challenges
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let eligible = eligible_validators(state, &[c.miner, c.validator, c.challenger]);
            sampling::challenge_committee(beacon, id, i as u32, &eligible, v)
        })
        .collect();
    let task = state.tasks.get_mut(id).expect("due task exists");
    for (c, committee) in task.challenges.iter_mut().zip(committees) {
        c.committee = committee;
    }
}

fn fail(state: &mut State, id: &TaskId, height: Height, reason: FailReason) {
    let task = state.tasks.get_mut(id).expect("due task exists");
    let burned = task.bounty;
    task.status = TaskStatus::Failed {
        reason,
        at: height,
        burned,
    };
    state.supply.burned = Amount(state.supply.burned.0 + burned.0);
}
