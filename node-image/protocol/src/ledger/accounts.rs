//! Transfers, bonding, unbonding and slashing.

use crate::crypto::Address;
use crate::error::TxError;
use crate::state::{State, Unbonding};
use crate::tx::Role;
use crate::units::{Amount, Height, Ppm};

use super::TxCtx;

/// Pending unbondings one stake may have; bounds state growth.
pub const MAX_UNBONDINGS: usize = 32;

pub(super) fn transfer(
    state: &mut State,
    from: Address,
    to: Address,
    amount: Amount,
) -> Result<(), TxError> {
    if amount == Amount::ZERO {
        return Err(TxError::ZeroAmount);
    }
    state.require_funds(&from, amount)?;
    state.debit(from, amount);
    state.credit(to, amount);
    Ok(())
}

pub(super) fn bond(
    state: &mut State,
    who: Address,
    role: Role,
    amount: Amount,
) -> Result<(), TxError> {
    if amount == Amount::ZERO {
        return Err(TxError::ZeroAmount);
    }
    state.require_funds(&who, amount)?;
    state.debit(who, amount);
    let stake = state.stakes.entry((who, role)).or_default();
    stake.bonded = stake
        .bonded
        .checked_add(amount)
        .expect("supply fits in u64");
    Ok(())
}

pub(super) fn unbond(
    state: &mut State,
    ctx: &TxCtx,
    who: Address,
    role: Role,
    amount: Amount,
) -> Result<(), TxError> {
    if amount == Amount::ZERO {
        return Err(TxError::ZeroAmount);
    }
    let stake = state.stakes.get(&(who, role)).cloned().unwrap_or_default();
    let remaining = stake
        .bonded
        .checked_sub(amount)
        .ok_or(TxError::InsufficientBond {
            role,
            need: amount,
            have: stake.bonded,
        })?;
    let min = min_bond(state, role);
    if remaining < min && is_engaged(state, &who, role) {
        return Err(TxError::StakeLocked {
            role,
            remaining,
            min,
        });
    }
    if stake.unbonding.len() >= MAX_UNBONDINGS {
        return Err(TxError::TooManyUnbondings {
            max: MAX_UNBONDINGS,
        });
    }
    let release_height = ctx.height.saturating_add(state.params.unbonding_blocks);
    let stake = state.stakes.get_mut(&(who, role)).expect("checked above");
    stake.bonded = remaining;
    stake.unbonding.push(Unbonding {
        amount,
        release_height,
    });
    Ok(())
}

pub(crate) fn min_bond(state: &State, role: Role) -> Amount {
    match role {
        Role::Miner => state.params.min_miner_bond,
        Role::Validator => state.params.min_validator_bond,
    }
}

/// Whether `who` has obligations in an active task that its stake in `role` must back: a claim
/// (miner), an assignment, a report under challenge or a committee seat (validator).
pub(crate) fn is_engaged(state: &State, who: &Address, role: Role) -> bool {
    state
        .tasks
        .values()
        .filter(|t| t.is_active())
        .any(|t| match role {
            Role::Miner => t.claims.contains_key(who),
            Role::Validator => {
                t.claims.values().any(|c| c.assigned.contains(who))
                    || t.challenges
                        .iter()
                        .any(|c| c.validator == *who || c.committee.contains(who))
            }
        })
}

/// Return matured unbondings to their owners' balances.
pub(super) fn release_unbondings(state: &mut State, height: Height) {
    let mut released = Vec::new();
    for ((who, _), stake) in state.stakes.iter_mut() {
        let mut sum = Amount::ZERO;
        stake.unbonding.retain(|u| {
            if u.release_height <= height {
                sum = Amount(sum.0 + u.amount.0);
                false
            } else {
                true
            }
        });
        if sum > Amount::ZERO {
            released.push((*who, sum));
        }
    }
    for (who, sum) in released {
        state.credit(who, sum);
    }
    state
        .stakes
        .retain(|_, s| s.bonded > Amount::ZERO || !s.unbonding.is_empty());
}

/// Take `fraction` of `who`'s stake in `role` (bonded first, then the newest unbondings) and
/// return how much was taken. The caller decides where it goes.
pub(crate) fn slash(state: &mut State, who: Address, role: Role, fraction: Ppm) -> Amount {
    let Some(stake) = state.stakes.get_mut(&(who, role)) else {
        return Amount::ZERO;
    };
    let amount = fraction.of(stake.total());
    let mut left = amount;
    let from_bond = left.min(stake.bonded);
    stake.bonded = Amount(stake.bonded.0 - from_bond.0);
    left = Amount(left.0 - from_bond.0);
    for u in stake.unbonding.iter_mut().rev() {
        let take = left.min(u.amount);
        u.amount = Amount(u.amount.0 - take.0);
        left = Amount(left.0 - take.0);
    }
    stake.unbonding.retain(|u| u.amount > Amount::ZERO);
    debug_assert_eq!(left, Amount::ZERO);
    amount
}
