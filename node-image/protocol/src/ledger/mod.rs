//! The ledger state machine: a pure, deterministic transition function.
//!
//! `apply_block(state, block) -> state'` is all a node needs; `apply_tx` is public so a mempool
//! can check a transaction against the current state, and `build_block` is what a proposer uses.
//! Each transaction kind has one function that validates everything first and mutates last,
//! so a rejected transaction leaves the state untouched without copying it. A block is applied
//! to a copy and only swapped in when all of it is valid.

mod accounts;
pub use accounts::{miner_collateral, validator_collateral};
mod finalize;
mod lifecycle;
mod reports;
mod tasks;

use crate::beacon::{self, VrfSecretKey};
use crate::block::{Block, BlockHeader, tx_root, tx_root_of_ids};
use crate::crypto::{Address, SecretKey};
use crate::error::{BlockError, TxError};
use crate::hash::Hash;
use crate::state::{State, TxPosition};
use crate::tx::{SignedTx, TxBody, limits};
use crate::units::{Amount, Height};

/// Block-level limits, so a proposer cannot make a block that others cannot afford to check.
pub mod block_limits {
    pub const MAX_TXS: usize = 5_000;
    pub const MAX_TX_BYTES_TOTAL: usize = 4 * 1024 * 1024;
}

/// Where a transaction is being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxCtx {
    pub height: Height,
    pub time_ms: u64,
    /// Position in the block.
    pub index: u32,
}

impl TxCtx {
    pub fn position(&self) -> TxPosition {
        TxPosition {
            height: self.height,
            index: self.index,
        }
    }
}

fn check_size(len: usize) -> Result<(), TxError> {
    if len > limits::MAX_TX_BYTES {
        return Err(TxError::TooLarge {
            len,
            max: limits::MAX_TX_BYTES,
        });
    }
    Ok(())
}

fn check_chain(state: &State, stx: &SignedTx) -> Result<(), TxError> {
    if stx.tx.chain_id != state.chain_id {
        return Err(TxError::WrongChain {
            expected: state.chain_id.clone(),
            got: stx.tx.chain_id.clone(),
        });
    }
    Ok(())
}

/// A transaction whose state-independent checks passed: it is within the size limit and its
/// signature verifies. Neither can change, so whoever holds one (a mempool re-checking pending
/// transactions after every block, a proposer building from it) never repeats them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTx {
    stx: SignedTx,
    hash: Hash,
    len: usize,
}

impl VerifiedTx {
    pub fn new(stx: SignedTx) -> Result<VerifiedTx, TxError> {
        Self::check(stx).map_err(|(_, _, e)| e)
    }

    /// `new` for many transactions at once, their signatures checked in one batch (a gossip
    /// burst): the same verdicts as `new` on each, at under half the cost when all are valid.
    /// A batch with forged signatures in it is halved until they are found ([`failing`]), so
    /// one forgery among a thousand honest transactions costs a few batch checks more, not a
    /// thousand single ones.
    pub fn new_batch(txs: Vec<SignedTx>) -> Vec<Result<VerifiedTx, TxError>> {
        let lens: Vec<usize> = txs.iter().map(|t| t.encode().len()).collect();
        // Oversized ones are refused by size alone, unchecked.
        let mut verdicts: Vec<Result<(), TxError>> = lens.iter().map(|&l| check_size(l)).collect();
        let sized: Vec<(usize, &SignedTx)> = txs
            .iter()
            .enumerate()
            .filter(|(i, _)| verdicts[*i].is_ok())
            .collect();
        for (at, e) in failing(
            &sized,
            &|some: &[(usize, &SignedTx)]| signatures_verify(some.iter().map(|(_, t)| *t)),
            &|(_, t): &(usize, &SignedTx)| t.verify_signature(),
        ) {
            verdicts[sized[at].0] = Err(e.into());
        }
        txs.into_iter()
            .zip(lens)
            .zip(verdicts)
            .map(|((stx, len), verdict)| {
                verdict?;
                let hash = stx.hash();
                Ok(VerifiedTx { stx, hash, len })
            })
            .collect()
    }

    /// As `new`, keeping the hash and length of a transaction that fails.
    fn check(stx: SignedTx) -> Result<VerifiedTx, (Hash, usize, TxError)> {
        let len = stx.encode().len();
        let checked = check_size(len).and_then(|()| Ok(stx.verify_signature()?));
        let hash = stx.hash();
        match checked {
            Ok(()) => Ok(VerifiedTx { stx, hash, len }),
            Err(e) => Err((hash, len, e)),
        }
    }

    pub fn tx(&self) -> &SignedTx {
        &self.stx
    }

    pub fn into_tx(self) -> SignedTx {
        self.stx
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Length of the canonical encoding.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Apply one signed transaction. On error nothing has changed.
pub fn apply_tx(state: &mut State, ctx: &TxCtx, stx: &SignedTx) -> Result<(), TxError> {
    check_size(stx.encode().len())?;
    check_chain(state, stx)?;
    stx.verify_signature()?;
    apply_body(state, ctx, stx)
}

/// Apply a transaction whose size and signature were already checked. On error nothing has
/// changed.
pub fn apply_verified_tx(state: &mut State, ctx: &TxCtx, vtx: &VerifiedTx) -> Result<(), TxError> {
    check_chain(state, &vtx.stx)?;
    apply_body(state, ctx, &vtx.stx)
}

/// The state-dependent part of a transaction: nonce and fee, then what its body does. The fee
/// is taken before the body runs (the body spends what is left) and burned; a body that fails
/// gives it back, so a rejected transaction changes nothing.
fn apply_body(state: &mut State, ctx: &TxCtx, stx: &SignedTx) -> Result<(), TxError> {
    let tx = &stx.tx;
    let expected = state.account(&tx.signer).nonce;
    if tx.nonce != expected || expected == u64::MAX {
        return Err(TxError::WrongNonce {
            signer: tx.signer,
            expected,
            got: tx.nonce,
        });
    }
    let who = tx.signer;
    if tx.fee < state.params.tx_fee {
        return Err(TxError::FeeTooLow {
            min: state.params.tx_fee,
            got: tx.fee,
        });
    }
    state.require_funds(&who, tx.fee)?;
    if tx.fee > Amount::ZERO {
        state.debit(who, tx.fee);
    }
    if let Err(e) = apply_effect(state, ctx, stx) {
        if tx.fee > Amount::ZERO {
            state.credit(who, tx.fee);
        }
        return Err(e);
    }
    state.supply.burned = Amount(state.supply.burned.0 + tx.fee.0);
    state.accounts.get_mut_or_default(who).nonce += 1;
    Ok(())
}

/// What a transaction's body does. On error nothing has changed.
fn apply_effect(state: &mut State, ctx: &TxCtx, stx: &SignedTx) -> Result<(), TxError> {
    let tx = &stx.tx;
    let who = tx.signer;
    match &tx.body {
        TxBody::Transfer { to, amount } => accounts::transfer(state, who, *to, *amount),
        TxBody::Bond { role, amount } => accounts::bond(state, who, *role, *amount),
        TxBody::Unbond { role, amount } => accounts::unbond(state, ctx, who, *role, *amount),
        TxBody::SubmitTask {
            spec,
            bounty,
            eval_commit,
            windows,
        } => tasks::submit(
            state,
            ctx,
            who,
            tx.nonce,
            spec,
            *bounty,
            *eval_commit,
            windows,
        ),
        TxBody::CommitClaim { task, commitment } => {
            tasks::commit_claim(state, ctx, who, task, *commitment)
        }
        TxBody::RevealClaim { task, claim, salt } => {
            tasks::reveal_claim(state, ctx, who, task, claim, *salt)
        }
        TxBody::RevealEvalSet {
            task,
            eval_set,
            salt,
        } => tasks::reveal_eval_set(state, ctx, who, task, eval_set, *salt),
        TxBody::CommitReport {
            task,
            miner,
            commitment,
        } => reports::commit_report(state, ctx, who, task, miner, *commitment),
        TxBody::RevealReport {
            task,
            miner,
            report,
            salt,
        } => reports::reveal_report(state, ctx, who, task, miner, report, *salt),
        TxBody::Challenge { task, commitment } => {
            reports::challenge(state, ctx, who, task, *commitment)
        }
        TxBody::RevealChallenge {
            task,
            challenge,
            dispute,
            salt,
        } => reports::reveal_challenge(state, ctx, who, task, *challenge, dispute, *salt),
        TxBody::CommitVote {
            task,
            challenge,
            commitment,
        } => reports::commit_vote(state, ctx, who, task, *challenge, *commitment),
        TxBody::RevealVote {
            task,
            challenge,
            upheld,
            salt,
        } => reports::reveal_vote(state, ctx, who, task, *challenge, *upheld, *salt),
    }
}

/// Apply a block to `state`, giving the next state. Checks the header against the tip, the
/// transaction root, every transaction, and the state root. On error `state` is unchanged.
pub fn apply_block(state: &State, block: &Block) -> Result<State, BlockError> {
    apply_block_known(state, block, |_| false)
}

/// [`apply_block`] for a node that has already checked some of the block's transactions (its
/// mempool holds them as [`VerifiedTx`]): one whose id `verified` answers true for skips its
/// size and signature checks. The id commits to the transaction and its signature, so the
/// result is the same as `apply_block`'s as long as `verified` only names transactions that
/// really were checked. The signatures of the others are checked in one batch first (a batch
/// gives exactly the verdicts of single checks); only if it fails are they checked one by
/// one, so that the error names the transaction.
pub fn apply_block_known(
    state: &State,
    block: &Block,
    verified: impl Fn(&Hash) -> bool,
) -> Result<State, BlockError> {
    let h = &block.header;
    check_header(state, h)?;
    check_block_limits(&block.txs)?;
    let ids: Vec<Hash> = block.txs.iter().map(SignedTx::hash).collect();
    let computed = tx_root_of_ids(&ids);
    if computed != h.tx_root {
        return Err(BlockError::TxRootMismatch {
            header: h.tx_root,
            computed,
        });
    }
    let known: Vec<bool> = ids.iter().map(&verified).collect();
    let unknown_signed = signatures_verify(
        block
            .txs
            .iter()
            .zip(&known)
            .filter(|(_, k)| !**k)
            .map(|(t, _)| t),
    );
    let mut next = state.clone();
    begin_block(&mut next, h.height, h.time_ms, h.beacon);
    for (i, (stx, id)) in block.txs.iter().zip(&ids).enumerate() {
        let ctx = TxCtx {
            height: h.height,
            time_ms: h.time_ms,
            index: i as u32,
        };
        let applied = if known[i] {
            check_chain(&next, stx).and_then(|()| apply_body(&mut next, &ctx, stx))
        } else if unknown_signed {
            check_size(stx.encode().len())
                .and_then(|()| check_chain(&next, stx))
                .and_then(|()| apply_body(&mut next, &ctx, stx))
        } else {
            apply_tx(&mut next, &ctx, stx)
        };
        applied.map_err(|error| BlockError::Tx {
            index: i,
            hash: *id,
            error,
        })?;
    }
    let computed = next.state_root();
    if computed != h.state_root {
        return Err(BlockError::StateRootMismatch {
            header: h.state_root,
            computed,
        });
    }
    next.tip.hash = h.hash();
    Ok(next)
}

/// Whether every transaction's signature verifies, checked in one batch.
/// Slices this long or shorter are checked one by one rather than halved again.
const ONE_BY_ONE: usize = 8;

/// The positions in `items` that fail `each`, with `each`'s error, found with as few single
/// checks as it can: `all` vouches for a whole slice at once (a batch check, which must pass
/// exactly when `each` passes on every item); a slice it refuses is halved, down to
/// [`ONE_BY_ONE`] items, which are checked with `each`. b failures among n cost about
/// 2b·log₂(n) batch checks.
fn failing<T, E>(
    items: &[T],
    all: &impl Fn(&[T]) -> bool,
    each: &impl Fn(&T) -> Result<(), E>,
) -> Vec<(usize, E)> {
    fn halve<T, E>(
        items: &[T],
        from: usize,
        all: &impl Fn(&[T]) -> bool,
        each: &impl Fn(&T) -> Result<(), E>,
        out: &mut Vec<(usize, E)>,
    ) {
        if items.is_empty() || all(items) {
            return;
        }
        if items.len() <= ONE_BY_ONE {
            for (i, item) in items.iter().enumerate() {
                if let Err(e) = each(item) {
                    out.push((from + i, e));
                }
            }
        } else {
            let mid = items.len() / 2;
            halve(&items[..mid], from, all, each, out);
            halve(&items[mid..], from + mid, all, each, out);
        }
    }
    let mut out = Vec::new();
    halve(items, 0, all, each, &mut out);
    out
}

fn signatures_verify<'a>(txs: impl Iterator<Item = &'a SignedTx>) -> bool {
    let txs: Vec<&SignedTx> = txs.collect();
    let signing: Vec<Vec<u8>> = txs.iter().map(|t| t.tx.signing_bytes()).collect();
    let items: Vec<(crate::Address, &[u8], crate::Signature)> = txs
        .iter()
        .zip(&signing)
        .map(|(t, m)| (t.tx.signer, m.as_slice(), t.signature))
        .collect();
    crate::crypto::verify_batch(&items)
}

impl State {
    /// Apply a block in place; on error the state is unchanged.
    pub fn apply_block(&mut self, block: &Block) -> Result<(), BlockError> {
        *self = apply_block(self, block)?;
        Ok(())
    }
}

/// A block a proposer built, the state after it, and the candidates it left out and why.
#[derive(Debug)]
pub struct BuiltBlock {
    pub block: Block,
    pub state: State,
    pub rejected: Vec<(Hash, TxError)>,
}

/// What a proposer signs its blocks' beacons with: its address and VRF key.
#[derive(Clone, Debug)]
pub struct ProposerKey {
    pub address: Address,
    pub vrf: VrfSecretKey,
}

impl ProposerKey {
    pub fn new(key: &SecretKey) -> ProposerKey {
        ProposerKey {
            address: key.address(),
            vrf: key.vrf(),
        }
    }
}

/// Build the next block from candidate transactions, in the order given: each one that applies
/// is included, each one that does not is reported, and the block limits are respected.
pub fn build_block(
    state: &State,
    proposer: &ProposerKey,
    time_ms: u64,
    candidates: impl IntoIterator<Item = SignedTx>,
) -> BuiltBlock {
    build(
        state,
        proposer,
        time_ms,
        candidates.into_iter().map(VerifiedTx::check),
    )
}

/// [`build_block`] from transactions whose size and signature were already checked.
pub fn build_block_verified(
    state: &State,
    proposer: &ProposerKey,
    time_ms: u64,
    candidates: impl IntoIterator<Item = VerifiedTx>,
) -> BuiltBlock {
    build(state, proposer, time_ms, candidates.into_iter().map(Ok))
}

/// A candidate is a verified transaction, or one that failed its stateless checks (with its
/// hash and encoded length, which still count against the block limits in the given order).
fn build(
    state: &State,
    proposer: &ProposerKey,
    time_ms: u64,
    candidates: impl Iterator<Item = Result<VerifiedTx, (Hash, usize, TxError)>>,
) -> BuiltBlock {
    let height = state.tip.height + 1;
    let prev_hash = state.tip.hash;
    let (vrf_proof, beacon) =
        beacon::prove(&proposer.vrf, &state.chain_id, height, &state.tip.beacon);
    let mut next = state.clone();
    begin_block(&mut next, height, time_ms, beacon);
    let mut txs = Vec::new();
    let mut bytes = 0;
    let mut rejected = Vec::new();
    for candidate in candidates {
        let len = match &candidate {
            Ok(v) => v.len,
            Err((_, len, _)) => *len,
        };
        if txs.len() == block_limits::MAX_TXS || bytes + len > block_limits::MAX_TX_BYTES_TOTAL {
            break;
        }
        let vtx = match candidate {
            Ok(v) => v,
            Err((hash, _, e)) => {
                rejected.push((hash, e));
                continue;
            }
        };
        let ctx = TxCtx {
            height,
            time_ms,
            index: txs.len() as u32,
        };
        match apply_verified_tx(&mut next, &ctx, &vtx) {
            Ok(()) => {
                bytes += len;
                txs.push(vtx.into_tx());
            }
            Err(e) => rejected.push((vtx.hash, e)),
        }
    }
    let header = BlockHeader {
        height,
        prev_hash,
        time_ms,
        proposer: proposer.address,
        vrf_proof,
        beacon,
        tx_root: tx_root(&txs),
        state_root: next.state_root(),
    };
    next.tip.hash = header.hash();
    BuiltBlock {
        block: Block { header, txs },
        state: next,
        rejected,
    }
}

fn check_header(state: &State, h: &BlockHeader) -> Result<(), BlockError> {
    if h.height != state.tip.height + 1 {
        return Err(BlockError::WrongHeight {
            expected: state.tip.height + 1,
            got: h.height,
        });
    }
    if h.prev_hash != state.tip.hash {
        return Err(BlockError::WrongPrevHash {
            expected: state.tip.hash,
            got: h.prev_hash,
        });
    }
    if h.time_ms <= state.tip.time_ms {
        return Err(BlockError::TimeNotIncreasing {
            prev: state.tip.time_ms,
            got: h.time_ms,
        });
    }
    let coordinator = state
        .coordinators
        .iter()
        .find(|c| c.address == h.proposer)
        .ok_or(BlockError::UnknownProposer(h.proposer))?;
    let computed = beacon::verify(
        &coordinator.vrf_key,
        &state.chain_id,
        h.height,
        &state.tip.beacon,
        &h.vrf_proof,
    )?;
    if computed != h.beacon {
        return Err(BlockError::WrongBeacon {
            header: h.beacon,
            computed,
        });
    }
    Ok(())
}

fn check_block_limits(txs: &[SignedTx]) -> Result<(), BlockError> {
    if txs.len() > block_limits::MAX_TXS {
        return Err(BlockError::TooManyTxs {
            count: txs.len(),
            max: block_limits::MAX_TXS,
        });
    }
    let bytes: usize = txs.iter().map(|t| t.encode().len()).sum();
    if bytes > block_limits::MAX_TX_BYTES_TOTAL {
        return Err(BlockError::TooLarge {
            bytes,
            max: block_limits::MAX_TX_BYTES_TOTAL,
        });
    }
    Ok(())
}

/// Work done at the start of every block, before its transactions: advance the tip, move tasks
/// whose phase ends here (assignment, failure, committees, finalization), then release matured
/// unbondings — after finalization, so stake a task slashes in this block is still there.
/// `beacon` is this block's beacon (checked against the proposer's VRF proof by
/// `apply_block`): whatever is sampled now uses it, and nobody knew it before the previous
/// block was decided. `apply_block` and `build_block` call it; it is public so a mempool can
/// check transactions against the state the next block will see.
pub fn begin_block(state: &mut State, height: Height, time_ms: u64, beacon: Hash) {
    // `tip.hash` already is the previous block's hash (checked by `apply_block`, taken from it
    // by `build_block`); it becomes this block's hash once the header exists.
    state.tip.height = height;
    state.tip.time_ms = time_ms;
    state.tip.beacon = beacon;
    state.ended.clear();
    lifecycle::advance_tasks(state, height, &beacon);
    accounts::release_unbondings(state, height);
}

/// Ledger-internal balance moves. Callers have already validated; a credit cannot overflow
/// because every token is counted in a total supply that fits in `u64`.
impl State {
    pub(crate) fn debit(&mut self, who: Address, amount: Amount) {
        let acct = self.accounts.get_mut_or_default(who);
        acct.balance = acct
            .balance
            .checked_sub(amount)
            .expect("debit was validated");
    }

    pub(crate) fn credit(&mut self, who: Address, amount: Amount) {
        let acct = self.accounts.get_mut_or_default(who);
        acct.balance = acct
            .balance
            .checked_add(amount)
            .expect("supply fits in u64");
    }

    pub(crate) fn require_funds(&self, who: &Address, need: Amount) -> Result<(), TxError> {
        let have = self.balance(who);
        if have < need {
            return Err(TxError::InsufficientFunds { need, have });
        }
        Ok(())
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::tx::{Tx, TxBody};
    use crate::{Amount, SecretKey};

    fn transfer(seed: u8, nonce: u64) -> SignedTx {
        let key = SecretKey::from_seed([seed; 32]);
        Tx {
            chain_id: "c".into(),
            signer: key.address(),
            nonce,
            fee: Amount(10),
            body: TxBody::Transfer {
                to: key.address(),
                amount: Amount(1),
            },
        }
        .sign(&key)
    }

    /// One bad item among 1,024 is found with a handful of single checks (all 1,024 were
    /// checked one by one before), and any set of bad items is found exactly.
    #[test]
    fn failures_in_a_batch_are_found_by_halving() {
        use std::cell::Cell;
        let singles = Cell::new(0usize);
        let batches = Cell::new(0usize);
        let check = |bad: &[usize], n: usize| {
            let items: Vec<usize> = (0..n).collect();
            let found = failing(
                &items,
                &|s: &[usize]| {
                    batches.set(batches.get() + 1);
                    s.iter().all(|i| !bad.contains(i))
                },
                &|i: &usize| {
                    singles.set(singles.get() + 1);
                    if bad.contains(i) { Err(*i) } else { Ok(()) }
                },
            );
            // Each found with its own error.
            assert!(found.iter().all(|(at, e)| at == e), "{found:?}");
            let found: Vec<usize> = found.into_iter().map(|(at, _)| at).collect();
            assert_eq!(found, bad, "n = {n}");
        };
        check(&[700], 1024);
        assert!(
            singles.get() <= ONE_BY_ONE,
            "{} single checks",
            singles.get()
        );
        assert!(
            batches.get() <= 2 * 10 + 1,
            "{} batch checks",
            batches.get()
        );
        singles.set(0);
        check(&[], 1024);
        assert_eq!(singles.get(), 0);
        for n in [1, 2, 7, 8, 9, 17, 100] {
            for bad in [
                vec![0],
                vec![n - 1],
                (0..n).collect(),
                (0..n).step_by(3).collect(),
            ] {
                check(&bad, n);
            }
        }
    }

    #[test]
    fn a_batch_gives_each_transaction_the_verdict_it_gets_alone() {
        let valid: Vec<SignedTx> = (1..=6).map(|i| transfer(i, u64::from(i))).collect();
        let got = VerifiedTx::new_batch(valid.clone());
        assert!(got.iter().all(Result::is_ok));
        assert_eq!(
            got.into_iter()
                .map(|v| v.unwrap().hash())
                .collect::<Vec<_>>(),
            valid.iter().map(SignedTx::hash).collect::<Vec<_>>()
        );

        let mut mixed = valid;
        mixed[3].tx.nonce += 1; // the signature no longer covers it
        let alone: Vec<bool> = mixed
            .iter()
            .cloned()
            .map(|t| VerifiedTx::new(t).is_ok())
            .collect();
        let batched: Vec<bool> = VerifiedTx::new_batch(mixed)
            .iter()
            .map(Result::is_ok)
            .collect();
        assert_eq!(batched, alone);
        assert_eq!(batched, vec![true, true, true, false, true, true]);
    }
}
