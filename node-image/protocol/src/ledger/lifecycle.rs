//! Height-driven task transitions, run at the start of each block: validator assignment when the
//! reveal window closes, failure when the eval set is withheld, committees when the challenge
//! window closes, and finalization.

use crate::crypto::Address;
use crate::hash::Hash;
use crate::sampling;
use crate::state::{Assignment, FailReason, Schedule, Seat, State, TaskStatus};
use crate::tx::{Role, TaskId};
use crate::units::{Amount, Height};

use super::accounts::{reserve, settle_reservation, validator_collateral};
use super::finalize::finalize;

/// The heights at whose start a task with this schedule may move: the block after each
/// window that ends in a transition.
pub(super) fn transition_heights(s: &Schedule) -> [Height; 5] {
    [
        s.reveal_end,
        s.eval_end,
        s.challenge_end,
        s.challenge_reveal_end,
        s.vote_reveal_end,
    ]
    .map(|end| end + 1)
}

/// Move every active task whose phase ends just before `height`, in task id order, found
/// through the deadline index (so a block costs what is due in it, not the number of active
/// tasks). `beacon` is this block's beacon, unknown to anyone but its proposer before the
/// previous block was decided (see `beacon` for the residual bias).
pub(super) fn advance_tasks(state: &mut State, height: Height, beacon: &Hash) {
    let due: Vec<(Height, TaskId)> = state
        .task_deadlines
        .keys()
        .take_while(|(at, _)| *at <= height)
        .copied()
        .collect();
    let mut mint_budget = state.params.max_mint_per_block;
    for key in due {
        state.task_deadlines.remove(&key);
        let (at, id) = key;
        debug_assert_eq!(at, height, "a task deadline was skipped");
        if state.tasks.get(&id).is_some_and(|t| t.is_active()) {
            advance(state, &id, height, beacon, &mut mint_budget);
        }
    }
}

fn advance(state: &mut State, id: &TaskId, height: Height, beacon: &Hash, mint: &mut Amount) {
    let task = &state.tasks[id];
    let s = task.schedule.clone();
    let closed = height - 1;
    if closed == s.reveal_end {
        if task.claims.values().any(|c| c.claim.is_some()) {
            assign(state, id, beacon);
        } else {
            finalize(state, id, height, mint);
        }
    } else if closed == s.eval_end {
        if task.eval_set.is_none() {
            fail(state, id, height, FailReason::EvalSetNotRevealed);
        }
    } else if closed == s.challenge_end {
        if task.challenges.is_empty() {
            finalize(state, id, height, mint);
        }
    } else if closed == s.challenge_reveal_end {
        if (0..task.challenges.len()).any(|i| task.is_primary_challenge(i)) {
            form_committees(state, id, beacon);
        } else {
            finalize(state, id, height, mint);
        }
    } else if closed == s.vote_reveal_end {
        finalize(state, id, height, mint);
    }
}

/// Validators whose free stake covers `collateral`, ascending, without `exclude`.
fn eligible_validators(state: &State, exclude: &[Address], collateral: Amount) -> Vec<Address> {
    state
        .stakes
        .iter()
        .filter(|((a, role), s)| {
            *role == Role::Validator && s.free() >= collateral && !exclude.contains(a)
        })
        .map(|((a, _), _)| *a)
        .collect()
}

/// Assign `v` validators to each revealed claim, each with its own `s` sampled segments and
/// its collateral reserved. Never the client, and never a miner with a claim on this task (who
/// would judge a competitor). Claims are served in address order, each seeing the reservations
/// made for the ones before it.
fn assign(state: &mut State, id: &TaskId, beacon: &Hash) {
    let task = &state.tasks[id];
    // The chain's floor, or more if the task asks.
    let (v, s) = (
        state.params.validators_per_claim,
        state
            .params
            .segments_per_claim
            .max(task.spec.verification.samples),
    );
    let segments = task.spec.segments();
    let collateral = validator_collateral(&state.params, task.bounty);
    let mut exclude: Vec<Address> = task.claims.keys().copied().collect();
    exclude.push(task.client);
    let miners: Vec<Address> = task
        .claims
        .iter()
        .filter(|(_, c)| c.claim.is_some())
        .map(|(m, _)| *m)
        .collect();
    for miner in miners {
        let eligible = eligible_validators(state, &exclude, collateral);
        let validators = sampling::assign_validators(beacon, id, &miner, &eligible, v);
        let mut assigned = Vec::with_capacity(validators.len());
        for validator in validators {
            reserve(state, validator, Role::Validator, collateral);
            assigned.push(Assignment {
                validator,
                segments: sampling::sample_segments(beacon, id, &miner, &validator, segments, s),
                collateral,
            });
        }
        let task = state.tasks.get_mut(id).expect("due task exists");
        task.claims
            .get_mut(&miner)
            .expect("a revealed claim")
            .assigned = assigned;
    }
}

/// Seat a committee of `v` for each primary challenge (the first-committed of each disputed
/// fact), each seat reserving the same collateral as a validation assignment. Nobody with a
/// stake in the outcome sits: the client, every claimant, every challenger, and every
/// validator assigned to the task. Challenges are served in commitment order, each seeing the
/// reservations made for the ones before it.
fn form_committees(state: &mut State, id: &TaskId, beacon: &Hash) {
    let v = state.params.validators_per_claim;
    let task = &state.tasks[id];
    let collateral = validator_collateral(&state.params, task.bounty);
    let primary: Vec<(usize, Vec<Address>)> = (0..task.challenges.len())
        .filter(|i| task.is_primary_challenge(*i))
        .map(|i| {
            // Every validator of the task, not only of the disputed claim: discarding a
            // report changes how the validators' pool is shared.
            let mut exclude: Vec<Address> = task.claims.keys().copied().collect();
            for claim in task.claims.values() {
                exclude.extend(claim.assigned.iter().map(|a| a.validator));
            }
            // Every challenger of the task too: one aimed at the same validator would share
            // the reward.
            exclude.extend(task.challenges.iter().map(|c| c.challenger));
            exclude.push(task.client);
            (i, exclude)
        })
        .collect();
    for (i, exclude) in primary {
        let eligible = eligible_validators(state, &exclude, collateral);
        let members = sampling::challenge_committee(beacon, id, i as u32, &eligible, v);
        for m in &members {
            reserve(state, *m, Role::Validator, collateral);
        }
        let task = state.tasks.get_mut(id).expect("due task exists");
        task.challenges[i].committee = members
            .into_iter()
            .map(|member| Seat { member, collateral })
            .collect();
    }
}

/// The client withheld its eval set: the bounty is burned, the miners' reservations released,
/// revealed claims get their deposits back (their miners did nothing wrong), unrevealed ones
/// lose theirs.
fn fail(state: &mut State, id: &TaskId, height: Height, reason: FailReason) {
    let mut task = state.tasks.remove(id).expect("due task exists");
    let mut burned = task.bounty;
    for (miner, c) in &task.claims {
        settle_reservation(state, *miner, Role::Miner, c.collateral, Amount::ZERO);
        for a in &c.assigned {
            settle_reservation(
                state,
                a.validator,
                Role::Validator,
                a.collateral,
                Amount::ZERO,
            );
        }
        if c.claim.is_some() {
            state.credit(*miner, c.deposit);
        } else {
            burned = Amount(burned.0 + c.deposit.0);
        }
    }
    state.supply.burned = Amount(state.supply.burned.0 + burned.0);
    task.status = TaskStatus::Failed {
        reason,
        at: height,
        burned,
    };
    state.ended.push(task);
}
