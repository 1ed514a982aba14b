//! Transfers, bonding, unbonding and slashing.

use crate::crypto::Address;
use crate::error::TxError;
use crate::genesis::Params;
use crate::state::{State, Unbonding};
use crate::tx::Role;
use crate::units::{Amount, Height};

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
    let stake = state.stakes.get_mut_or_default((who, role));
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
    if amount > stake.bonded {
        return Err(TxError::InsufficientBond {
            role,
            need: amount,
            have: stake.bonded,
        });
    }
    if amount > stake.free() {
        return Err(TxError::StakeLocked {
            role,
            asked: amount,
            free: stake.free(),
            bonded: stake.bonded,
        });
    }
    if stake.unbonding.len() >= MAX_UNBONDINGS {
        return Err(TxError::TooManyUnbondings {
            max: MAX_UNBONDINGS,
        });
    }
    let release_height = ctx.height.saturating_add(state.params.unbonding_blocks);
    let stake = state.stakes.get_mut(&(who, role)).expect("checked above");
    stake.bonded = Amount(stake.bonded.0 - amount.0);
    stake.unbonding.push(Unbonding {
        amount,
        release_height,
    });
    state
        .unbonding_queue
        .insert((release_height, who, role), ());
    Ok(())
}

/// Return matured unbondings to their owners' balances. The queue names the stakes that have
/// one, so a block's cost grows with what matures in it, not with the number of stakes.
pub(super) fn release_unbondings(state: &mut State, height: Height) {
    let due: Vec<(Height, Address, Role)> = state
        .unbonding_queue
        .keys()
        .take_while(|(at, _, _)| *at <= height)
        .copied()
        .collect();
    for key in due {
        state.unbonding_queue.remove(&key);
        let (_, who, role) = key;
        let Some(stake) = state.stakes.get_mut(&(who, role)) else {
            debug_assert!(false, "an unbonding is queued for a stake that is gone");
            continue;
        };
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
            state.credit(who, sum);
        }
        forget_if_empty(state, who, role);
    }
}

/// Drop a stake with nothing bonded and nothing unbonding, so state does not keep empty rows.
fn forget_if_empty(state: &mut State, who: Address, role: Role) {
    if state
        .stakes
        .get(&(who, role))
        .is_some_and(|s| s.bonded == Amount::ZERO && s.unbonding.is_empty())
    {
        state.stakes.remove(&(who, role));
    }
}

/// Reserve `amount` of `who`'s free stake in `role` as collateral. The caller has checked that
/// enough is free.
pub(crate) fn reserve(state: &mut State, who: Address, role: Role, amount: Amount) {
    let stake = state
        .stakes
        .get_mut(&(who, role))
        .expect("reserving from an existing stake");
    debug_assert!(stake.free() >= amount, "reservation was validated");
    stake.reserved = Amount(stake.reserved.0 + amount.0);
}

/// End a reservation of `collateral`, first taking `slash` of it (at most all of it) out of
/// the stake; returns what was taken. The caller decides where it goes.
pub(crate) fn settle_reservation(
    state: &mut State,
    who: Address,
    role: Role,
    collateral: Amount,
    slash: Amount,
) -> Amount {
    let Some(stake) = state.stakes.get_mut(&(who, role)) else {
        debug_assert!(
            collateral == Amount::ZERO,
            "a reservation outlived its stake"
        );
        return Amount::ZERO;
    };
    let taken = slash.min(collateral).min(stake.bonded);
    stake.reserved = stake.reserved.saturating_sub(collateral);
    stake.bonded = Amount(stake.bonded.0 - taken.0);
    forget_if_empty(state, who, role);
    taken
}

/// The collateral a validator reserves per assignment: enough that the quorum needed to pass a
/// claim loses at least the bounty between them, and never less than the minimum bond.
pub fn validator_collateral(params: &Params, bounty: Amount) -> Amount {
    let q = u64::from(params.quorum());
    Amount(bounty.0.div_ceil(q)).max(params.min_validator_bond)
}

/// The collateral a miner reserves per claim: the bounty (an invalid claim loses at least what
/// it tried to win), and never less than the minimum bond.
pub fn miner_collateral(params: &Params, bounty: Amount) -> Amount {
    bounty.max(params.min_miner_bond)
}
