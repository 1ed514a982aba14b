//! Client and miner transactions: submitting a task, committing and revealing claims, and
//! revealing the eval set.

use std::collections::BTreeMap;

use crate::crypto::Address;
use crate::error::TxError;
use crate::hash::Hash;
use crate::state::{ClaimEntry, Phase, Schedule, State, Task, TaskStatus};
use crate::tx::{
    Claim, DatasetRef, Role, TaskId, TaskSpec, Windows, claim_commitment, eval_commitment, limits,
    task_id,
};
use crate::units::Amount;

use super::TxCtx;
use super::accounts::{miner_collateral, reserve};

/// The task `id`, which must be in phase `expected` at `ctx.height`.
pub(super) fn task_in_phase<'a>(
    state: &'a State,
    ctx: &TxCtx,
    id: &TaskId,
    expected: Phase,
    kind: &'static str,
) -> Result<&'a Task, TxError> {
    let task = state.tasks.get(id).ok_or(TxError::UnknownTask(*id))?;
    let actual = task.phase(ctx.height);
    if actual != expected {
        return Err(TxError::WrongPhase {
            task: *id,
            kind,
            expected,
            actual,
        });
    }
    Ok(task)
}

pub(super) fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), TxError> {
    if s.len() > max {
        return Err(TxError::FieldTooLarge {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// Size limits on a dataset reference's strings (the shape is `task::check_dataset`'s).
fn check_dataset_sizes(field: &'static str, d: &DatasetRef) -> Result<(), TxError> {
    for blob in d.blobs() {
        check_len(field, &blob.locator, limits::MAX_LOCATOR)?;
    }
    Ok(())
}

fn check_spec(state: &State, spec: &TaskSpec) -> Result<(), TxError> {
    check_len("model", &spec.model, limits::MAX_MODEL)?;
    check_dataset_sizes("dataset", &spec.dataset)?;
    if spec.hyper.len() > limits::MAX_HYPER {
        return Err(TxError::FieldTooLarge {
            field: "hyper",
            len: spec.hyper.len(),
            max: limits::MAX_HYPER,
        });
    }
    if spec.steps < state.params.min_steps || spec.steps > state.params.max_steps {
        return Err(TxError::InvalidSpec {
            field: "steps",
            why: "must be between the chain's min_steps and max_steps",
        });
    }
    spec.check().map_err(|e| TxError::InvalidSpec {
        field: e.field,
        why: e.why,
    })
}

fn check_windows(state: &State, w: &Windows) -> Result<(), TxError> {
    let (min, max) = (state.params.min_window, state.params.max_window);
    for (name, value) in w.named() {
        if !(min..=max).contains(&value) {
            return Err(TxError::BadWindow {
                name,
                value,
                min,
                max,
            });
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn submit(
    state: &mut State,
    ctx: &TxCtx,
    client: Address,
    nonce: u64,
    spec: &TaskSpec,
    bounty: Amount,
    eval_commit: Hash,
    windows: &Windows,
) -> Result<(), TxError> {
    check_spec(state, spec)?;
    check_windows(state, windows)?;
    if bounty < state.params.min_bounty {
        return Err(TxError::BountyTooSmall {
            min: state.params.min_bounty,
            got: bounty,
        });
    }
    let burn = state.params.task_burn.of(bounty);
    let need = bounty.checked_add(burn).ok_or(TxError::Overflow)?;
    state.require_funds(&client, need)?;
    let id = task_id(&client, nonce);
    if state.tasks.contains_key(&id) {
        return Err(TxError::Duplicate("task"));
    }
    state.debit(client, need);
    state.supply.burned = Amount(state.supply.burned.0 + burn.0);
    let schedule = Schedule::new(ctx.height, windows);
    for at in super::lifecycle::transition_heights(&schedule) {
        state.task_deadlines.insert((at, id), ());
    }
    state.tasks.insert(
        id,
        Task {
            id,
            client,
            spec: spec.clone(),
            bounty,
            eval_commit,
            windows: *windows,
            schedule,
            claims: BTreeMap::new(),
            eval_set: None,
            challenges: Vec::new(),
            status: TaskStatus::Active,
        },
    );
    Ok(())
}

/// The deposit a claim commitment escrows: at least `claim_deposit`, and at least the bounty
/// over the number of claim slots, so that filling every slot without revealing burns about
/// the bounty itself.
pub(crate) fn claim_deposit(params: &crate::genesis::Params, bounty: Amount) -> Amount {
    let share = bounty
        .0
        .div_ceil(u64::from(params.max_claims_per_task.max(1)));
    params.claim_deposit.max(Amount(share))
}

pub(super) fn commit_claim(
    state: &mut State,
    ctx: &TxCtx,
    miner: Address,
    id: &TaskId,
    commitment: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::Commit, "commit_claim")?;
    if task.client == miner {
        return Err(TxError::ClientCannotClaim);
    }
    if task.claims.contains_key(&miner) {
        return Err(TxError::Duplicate("claim commitment"));
    }
    let max = state.params.max_claims_per_task;
    if task.claims.len() >= max as usize {
        return Err(TxError::TooManyClaims { max });
    }
    let bounty = task.bounty;
    let collateral = miner_collateral(&state.params, bounty);
    let have = state.free_stake(&miner, Role::Miner);
    if have < collateral {
        return Err(TxError::InsufficientBond {
            role: Role::Miner,
            need: collateral,
            have,
        });
    }
    let deposit = claim_deposit(&state.params, bounty);
    state.require_funds(&miner, deposit)?;
    state.debit(miner, deposit);
    reserve(state, miner, Role::Miner, collateral);
    let task = state.tasks.get_mut(id).expect("checked above");
    task.claims.insert(
        miner,
        ClaimEntry {
            commitment,
            committed_at: ctx.position(),
            deposit,
            collateral,
            claim: None,
            salt: None,
            assigned: Vec::new(),
            reports: BTreeMap::new(),
        },
    );
    Ok(())
}

fn check_claim(task: &Task, claim: &Claim) -> Result<(), TxError> {
    check_len("artifacts", &claim.artifacts, limits::MAX_LOCATOR)?;
    if claim.steps != task.spec.steps {
        return Err(TxError::StepsMismatch {
            expected: task.spec.steps,
            got: claim.steps,
        });
    }
    let ranges = &task.spec.hyper;
    let names_match = claim.hyper.len() == ranges.len()
        && claim
            .hyper
            .iter()
            .zip(ranges)
            .all(|(v, r)| v.name == r.name);
    if !names_match {
        return Err(TxError::HyperMismatch {
            expected: ranges.iter().map(|r| r.name.clone()).collect(),
        });
    }
    for (v, r) in claim.hyper.iter().zip(ranges) {
        if v.value < r.min || v.value > r.max {
            return Err(TxError::HyperOutOfRange {
                name: v.name.clone(),
                value: v.value,
                min: r.min,
                max: r.max,
            });
        }
    }
    Ok(())
}

pub(super) fn reveal_claim(
    state: &mut State,
    ctx: &TxCtx,
    miner: Address,
    id: &TaskId,
    claim: &Claim,
    salt: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::Reveal, "reveal_claim")?;
    let entry = task
        .claims
        .get(&miner)
        .ok_or(TxError::NoCommitment("claim"))?;
    if entry.claim.is_some() {
        return Err(TxError::Duplicate("claim reveal"));
    }
    check_claim(task, claim)?;
    if claim_commitment(id, &miner, claim, &salt) != entry.commitment {
        return Err(TxError::RevealMismatch("claim"));
    }
    let entry = state
        .tasks
        .get_mut(id)
        .and_then(|t| t.claims.get_mut(&miner))
        .expect("checked above");
    entry.claim = Some(claim.clone());
    entry.salt = Some(salt);
    Ok(())
}

pub(super) fn reveal_eval_set(
    state: &mut State,
    ctx: &TxCtx,
    who: Address,
    id: &TaskId,
    eval_set: &DatasetRef,
    salt: Hash,
) -> Result<(), TxError> {
    let task = task_in_phase(state, ctx, id, Phase::EvalReveal, "reveal_eval_set")?;
    if task.client != who {
        return Err(TxError::NotClient {
            client: task.client,
        });
    }
    if task.eval_set.is_some() {
        return Err(TxError::Duplicate("eval set reveal"));
    }
    check_dataset_sizes("eval_set", eval_set)?;
    crate::task::check_dataset("eval_set", eval_set).map_err(|e| TxError::InvalidSpec {
        field: e.field,
        why: e.why,
    })?;
    if eval_commitment(eval_set, &salt) != task.eval_commit {
        return Err(TxError::RevealMismatch("eval set"));
    }
    state.tasks.get_mut(id).expect("checked above").eval_set = Some(eval_set.clone());
    Ok(())
}
