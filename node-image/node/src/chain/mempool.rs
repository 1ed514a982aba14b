//! Transactions waiting for a block. Admission runs the ledger's own checks against the
//! state the next block will start from plus everything already pending, so a transaction is
//! admitted only if it would apply (signature, chain, nonce, balance, task rules) in the order
//! it would be proposed. After each block the pending state is rebuilt from the new tip and
//! whatever no longer applies is evicted, with its reason kept for `GET /v1/tx/{hash}`. Pending
//! transactions are held as `VerifiedTx`, so that rebuild never re-checks a signature.
//!
//! A transaction whose nonce is a little ahead of its sender's next one is held aside as
//! *queued* until the gap fills: gossip between coordinators does not keep one sender's
//! transactions in order, and a coordinator that turned away nonce n+1 because n was still in
//! flight would never see it again (gossip delivers each message once).
//!
//! Spam: every transaction pays a burned fee once included; one sender may hold at most
//! `max_per_sender` transactions here (`max_queued_per_sender` of them queued), and a full pool
//! makes room for a transaction that offers a higher fee by evicting the cheapest one that no
//! other waits on (a queued one, or the last of a sender's pending run), so filling the pool
//! costs what every held transaction offers.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use pot_protocol::ledger::{TxCtx, begin_block};
use pot_protocol::{Address, Hash, SignedTx, State, TxError, VerifiedTx, apply_verified_tx};

use super::Admission;

/// How far ahead of its sender's next nonce a transaction may be and still be queued.
pub const MAX_NONCE_GAP: u64 = 64;

/// Bounds on what the mempool holds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Pending and queued transactions together.
    pub max_txs: usize,
    pub max_bytes: usize,
    /// Rejections remembered for status queries.
    pub remembered_rejections: usize,
    /// Blocks a queued transaction waits for its gap to fill before it is dropped.
    pub queued_for_blocks: u64,
    /// Queued transactions at most (they count toward `max_txs` too), so that transactions
    /// which may never apply cannot crowd out ones that do.
    pub max_queued: usize,
    /// Pending and queued transactions of one sender at most.
    pub max_per_sender: usize,
    /// Queued transactions of one sender at most.
    pub max_queued_per_sender: usize,
    /// Bytes of queued transactions at most (they count toward `max_bytes` too).
    pub max_queued_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_txs: 50_000,
            max_bytes: 64 * 1024 * 1024,
            remembered_rejections: 10_000,
            queued_for_blocks: 100,
            max_queued: 10_000,
            max_per_sender: 512,
            max_queued_per_sender: 16,
            max_queued_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Why a transaction was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("{0}")]
    Invalid(#[from] TxError),
    #[error("mempool is full ({count} transactions, {bytes} bytes)")]
    Full { count: usize, bytes: usize },
    #[error("another transaction from {signer} with nonce {nonce} is already queued")]
    NonceTaken { signer: Address, nonce: u64 },
    #[error("{signer} already has {count} transactions waiting here (at most {max})")]
    SenderFull {
        signer: Address,
        count: usize,
        max: usize,
    },
}

/// What happened to a transaction the mempool saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Pending,
    /// Held until its sender's next nonce (given) reaches its own.
    Queued {
        next_nonce: u64,
    },
    Rejected(String),
}

/// The transaction a full pool would evict next.
struct Evictable {
    fee: pot_protocol::Amount,
    hash: Hash,
    queued: bool,
}

/// A transaction held until its sender's earlier nonces arrive.
struct Queued {
    vtx: VerifiedTx,
    /// Height of the block it was meant for when it was queued.
    since: u64,
}

pub struct Mempool {
    limits: Limits,
    /// The tip state, advanced into the next block, before any pending transaction.
    base_state: State,
    /// `base_state` with every pending transaction applied.
    pending_state: State,
    /// Pending transactions in admission order (which is nonce order per sender).
    queue: Vec<VerifiedTx>,
    hashes: HashSet<Hash>,
    /// Transactions ahead of their sender's next nonce, by sender and nonce.
    queued: BTreeMap<(Address, u64), Queued>,
    queued_hashes: HashMap<Hash, (Address, u64)>,
    /// Pending and queued transactions per sender.
    per_sender: HashMap<Address, usize>,
    /// Bytes of pending and queued transactions.
    bytes: usize,
    /// Bytes of queued transactions.
    queued_bytes: usize,
    rejected: HashMap<Hash, String>,
    rejected_order: VecDeque<Hash>,
}

fn next_block_state(tip: &State, now_ms: u64) -> State {
    let mut s = tip.clone();
    let time = now_ms.max(tip.tip.time_ms + 1);
    // The next block's beacon is not known yet; no transaction's validity depends on it.
    begin_block(&mut s, tip.tip.height + 1, time, tip.tip.beacon);
    s
}

impl Mempool {
    pub fn new(tip: &State, now_ms: u64, limits: Limits) -> Mempool {
        let base_state = next_block_state(tip, now_ms);
        Mempool {
            limits,
            pending_state: base_state.clone(),
            base_state,
            queue: Vec::new(),
            hashes: HashSet::new(),
            queued: BTreeMap::new(),
            queued_hashes: HashMap::new(),
            per_sender: HashMap::new(),
            bytes: 0,
            queued_bytes: 0,
            rejected: HashMap::new(),
            rejected_order: VecDeque::new(),
        }
    }

    /// Pending and queued transactions.
    pub fn len(&self) -> usize {
        self.queue.len() + self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Transactions that could go into the next block.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Admit a transaction. Submitting one that is already pending or queued is not an error.
    pub fn admit(&mut self, stx: SignedTx) -> Result<Hash, AdmitError> {
        if let Some(hash) = self.precheck(&stx, stx.hash())? {
            return Ok(hash);
        }
        let vtx = VerifiedTx::new(stx)?;
        self.admit_checked(vtx).map(|a| a.hash())
    }

    /// The checks that come before a signature is verified, cheap enough to make under the
    /// mempool's lock: `Some(hash)` when the transaction is held already, an error when its
    /// sender has no room. The signature is then verified without the lock. `hash` is
    /// `stx.hash()`, which the caller has already.
    pub fn precheck(&self, stx: &SignedTx, hash: Hash) -> Result<Option<Hash>, AdmitError> {
        debug_assert_eq!(hash, stx.hash());
        if self.hashes.contains(&hash) || self.queued_hashes.contains_key(&hash) {
            return Ok(Some(hash));
        }
        let signer = stx.tx.signer;
        let held = self.per_sender.get(&signer).copied().unwrap_or(0);
        if held >= self.limits.max_per_sender {
            return Err(AdmitError::SenderFull {
                signer,
                count: held,
                max: self.limits.max_per_sender,
            });
        }
        Ok(None)
    }

    /// Admit a transaction whose signature was verified (the pool may have changed since its
    /// precheck, so that is made again): `Known` when another submission of it got in first
    /// meanwhile, so that only one of them passes it on.
    pub fn admit_checked(&mut self, vtx: VerifiedTx) -> Result<Admission, AdmitError> {
        if let Some(hash) = self.precheck(vtx.tx(), vtx.hash())? {
            return Ok(Admission::Known(hash));
        }
        let since = self.pending_state.tip.height;
        if self.is_full(vtx.len()) {
            self.make_room_for(&vtx)?;
        }
        self.admit_verified(vtx, since).map(Admission::New)
    }

    fn is_full(&self, len: usize) -> bool {
        self.len() >= self.limits.max_txs || self.bytes + len > self.limits.max_bytes
    }

    fn full(&self) -> AdmitError {
        AdmitError::Full {
            count: self.len(),
            bytes: self.bytes,
        }
    }

    /// The transaction to evict first: the cheapest queued one if any (it may never apply),
    /// else the cheapest that no other waits on — the last of a sender's pending run. Never one
    /// of `except`'s (a sender does not push out its own earlier nonces).
    fn cheapest_evictable(&self, except: &Address) -> Option<Evictable> {
        let pick = |it: &mut dyn Iterator<Item = &VerifiedTx>| {
            it.filter(|v| v.tx().tx.signer != *except)
                // Cheapest first; among equals, the later nonce, then the larger id.
                .min_by_key(|v| {
                    (
                        v.tx().tx.fee,
                        std::cmp::Reverse(v.tx().tx.nonce),
                        std::cmp::Reverse(v.hash()),
                    )
                })
                .map(|v| (v.tx().tx.fee, v.hash()))
        };
        if let Some((fee, hash)) = pick(&mut self.queued.values().map(|q| &q.vtx)) {
            return Some(Evictable {
                fee,
                hash,
                queued: true,
            });
        }
        let mut last_of_sender: HashMap<Address, &VerifiedTx> = HashMap::new();
        for vtx in &self.queue {
            last_of_sender.insert(vtx.tx().tx.signer, vtx);
        }
        pick(&mut last_of_sender.into_values()).map(|(fee, hash)| Evictable {
            fee,
            hash,
            queued: false,
        })
    }

    /// Make room for `vtx` by evicting one transaction: a queued one first (it may never
    /// apply), else the cheapest last-of-a-run pending one if `vtx` offers a higher fee. Only
    /// if `vtx` applies now — it pays its fee when included — on the pending state rebuilt
    /// without the victim: a transaction that is invalid, only queueable, or valid only while
    /// the victim is there, evicts nothing.
    fn make_room_for(&mut self, vtx: &VerifiedTx) -> Result<(), AdmitError> {
        let fee = vtx.tx().tx.fee;
        let signer = vtx.tx().tx.signer;
        let Some(victim) = self.cheapest_evictable(&signer) else {
            return Err(self.full());
        };
        if !victim.queued && fee <= victim.fee {
            return Err(self.full());
        }
        let victim_len = self.len_of(&victim.hash);
        let fits = self.len() - 1 < self.limits.max_txs
            && self.bytes - victim_len + vtx.len() <= self.limits.max_bytes;
        if !fits {
            return Err(self.full());
        }
        // The pending state without the victim: unchanged for a queued one; replayed for a
        // pending one, which must not push out others that depended on it (a transfer that
        // funds another sender's run, say) for the price of one fee.
        let without = if victim.queued {
            None
        } else {
            let (state, broken) = self.replayed_without(&victim.hash);
            if broken > 0 {
                return Err(self.full());
            }
            Some(state)
        };
        let mut trial = without.as_ref().unwrap_or(&self.pending_state).clone();
        let ctx = TxCtx {
            height: trial.tip.height,
            time_ms: trial.tip.time_ms,
            index: self.queue.len() as u32,
        };
        if let Err(e) = apply_verified_tx(&mut trial, &ctx, vtx) {
            return Err(match e {
                TxError::WrongNonce { .. } => self.full(),
                e => e.into(),
            });
        }
        self.evict(&victim.hash);
        // Every other pending transaction still applies (checked above): the replayed state
        // is the rebuilt one, so nothing needs rebuilding.
        if let Some(state) = without {
            self.pending_state = state;
        }
        self.remember_rejection(
            victim.hash,
            format!(
                "evicted from a full mempool by a transaction offering {fee} (this one offered {})",
                victim.fee
            ),
        );
        Ok(())
    }

    /// The pending state as it would be without the pending transaction `victim`, and how
    /// many other pending transactions would then no longer apply.
    fn replayed_without(&self, victim: &Hash) -> (State, usize) {
        let mut state = self.base_state.clone();
        let mut broken = 0;
        for (i, vtx) in self
            .queue
            .iter()
            .filter(|v| v.hash() != *victim)
            .enumerate()
        {
            let ctx = TxCtx {
                height: state.tip.height,
                time_ms: state.tip.time_ms,
                index: i as u32,
            };
            if apply_verified_tx(&mut state, &ctx, vtx).is_err() {
                broken += 1;
            }
        }
        (state, broken)
    }

    /// The encoded length of a held transaction.
    fn len_of(&self, hash: &Hash) -> usize {
        if let Some(key) = self.queued_hashes.get(hash) {
            return self.queued[key].vtx.len();
        }
        self.queue
            .iter()
            .find(|v| v.hash() == *hash)
            .map_or(0, VerifiedTx::len)
    }

    /// Remove one transaction; whether it was pending (the pending state is then stale).
    fn evict(&mut self, hash: &Hash) -> bool {
        if let Some(key) = self.queued_hashes.get(hash).copied() {
            self.take_queued(&key);
            return false;
        }
        if let Some(i) = self.queue.iter().position(|v| v.hash() == *hash) {
            let vtx = self.queue.remove(i);
            self.hashes.remove(hash);
            self.bytes -= vtx.len();
            self.count_out(&vtx.tx().tx.signer);
            return true;
        }
        false
    }

    fn count_in(&mut self, signer: Address) {
        *self.per_sender.entry(signer).or_default() += 1;
    }

    fn count_out(&mut self, signer: &Address) {
        if let Some(n) = self.per_sender.get_mut(signer) {
            *n -= 1;
            if *n == 0 {
                self.per_sender.remove(signer);
            }
        }
    }

    /// Admit a checked transaction there is room for: pending if it applies now, queued if
    /// only its sender's earlier nonces are missing. `since` is when it was first queued.
    fn admit_verified(&mut self, vtx: VerifiedTx, since: u64) -> Result<Hash, AdmitError> {
        let ctx = TxCtx {
            height: self.pending_state.tip.height,
            time_ms: self.pending_state.tip.time_ms,
            index: self.queue.len() as u32,
        };
        let hash = vtx.hash();
        match apply_verified_tx(&mut self.pending_state, &ctx, &vtx) {
            Ok(()) => {
                let signer = vtx.tx().tx.signer;
                self.hashes.insert(hash);
                self.bytes += vtx.len();
                self.queue.push(vtx);
                self.count_in(signer);
                self.promote(signer);
                Ok(hash)
            }
            // Only senders the ledger knows (ones that were ever paid) may queue: a fresh key
            // costs nothing, and its transactions could not pay for anything anyway.
            Err(TxError::WrongNonce {
                signer,
                expected,
                got,
            }) if got > expected
                && got - expected <= MAX_NONCE_GAP
                && self.pending_state.accounts.contains_key(&signer) =>
            {
                if self.queued.contains_key(&(signer, got)) {
                    return Err(AdmitError::NonceTaken { signer, nonce: got });
                }
                // A queued transaction must be able to pay its fee now, so that a fee it could
                // never pay does not buy it a place.
                let fee = vtx.tx().tx.fee;
                if fee < self.pending_state.params.tx_fee {
                    return Err(TxError::FeeTooLow {
                        min: self.pending_state.params.tx_fee,
                        got: fee,
                    }
                    .into());
                }
                let have = self.pending_state.balance(&signer);
                if have < fee {
                    return Err(TxError::InsufficientFunds { need: fee, have }.into());
                }
                if self.queued.len() >= self.limits.max_queued
                    || self.queued_bytes + vtx.len() > self.limits.max_queued_bytes
                {
                    return Err(self.full());
                }
                let mine = self.queued.range((signer, 0)..=(signer, u64::MAX)).count();
                if mine >= self.limits.max_queued_per_sender {
                    return Err(AdmitError::SenderFull {
                        signer,
                        count: mine,
                        max: self.limits.max_queued_per_sender,
                    });
                }
                self.bytes += vtx.len();
                self.queued_bytes += vtx.len();
                self.queued_hashes.insert(hash, (signer, got));
                self.queued.insert((signer, got), Queued { vtx, since });
                self.count_in(signer);
                Ok(hash)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Move `signer`'s queued transactions that are now next in line into the pending queue.
    fn promote(&mut self, signer: Address) {
        let next = self.pending_state.account(&signer).nonce;
        let Some(q) = self.take_queued(&(signer, next)) else {
            return;
        };
        let hash = q.vtx.hash();
        // Admitting it promotes the one after it in turn.
        if let Err(e) = self.admit_verified(q.vtx, q.since) {
            self.remember_rejection(hash, e.to_string());
        }
    }

    fn take_queued(&mut self, key: &(Address, u64)) -> Option<Queued> {
        let q = self.queued.remove(key)?;
        self.queued_hashes.remove(&q.vtx.hash());
        self.bytes -= q.vtx.len();
        self.queued_bytes -= q.vtx.len();
        self.count_out(&key.0);
        Some(q)
    }

    /// Candidates for the next block, in the order they were admitted.
    pub fn candidates(&self) -> impl Iterator<Item = &VerifiedTx> {
        self.queue.iter()
    }

    /// Whether the transaction with this id is held here (so its signature was checked).
    pub fn holds(&self, hash: &Hash) -> bool {
        self.hashes.contains(hash) || self.queued_hashes.contains_key(hash)
    }

    pub fn seen(&self, hash: &Hash) -> Option<Seen> {
        if self.hashes.contains(hash) {
            return Some(Seen::Pending);
        }
        if let Some((signer, _)) = self.queued_hashes.get(hash) {
            let next_nonce = self.pending_state.account(signer).nonce;
            return Some(Seen::Queued { next_nonce });
        }
        self.rejected.get(hash).map(|r| Seen::Rejected(r.clone()))
    }

    /// A block was decided: drop what it included, rebuild the pending state on the new tip,
    /// evict what no longer applies, and promote or expire queued transactions. Returns how
    /// many were evicted.
    pub fn on_block(&mut self, tip: &State, included: &[Hash], now_ms: u64) -> usize {
        let included: HashSet<&Hash> = included.iter().collect();
        self.queue.retain(|v| !included.contains(&v.hash()));
        self.base_state = next_block_state(tip, now_ms);
        let height = self.base_state.tip.height;
        let mut evicted = self.rebuild(height);
        // Queued transactions another coordinator's block included are done; the rest are
        // dropped once their nonce is used up or they have waited too long.
        for hash in &included {
            if let Some(key) = self.queued_hashes.get(*hash).copied() {
                self.take_queued(&key);
            }
        }
        let keys: Vec<(Address, u64)> = self.queued.keys().copied().collect();
        for (signer, nonce) in keys {
            let next = self.pending_state.account(&signer).nonce;
            let since = self.queued[&(signer, nonce)].since;
            let reason = if nonce < next {
                format!("nonce {nonce} of {signer} was used by another transaction")
            } else if height.saturating_sub(since) > self.limits.queued_for_blocks {
                format!(
                    "queued for {} blocks waiting for nonce {next} of {signer}, which never came",
                    self.limits.queued_for_blocks
                )
            } else {
                continue;
            };
            if let Some(q) = self.take_queued(&(signer, nonce)) {
                self.remember_rejection(q.vtx.hash(), reason);
                evicted += 1;
            }
        }
        let senders: Vec<Address> = {
            let mut s: Vec<Address> = self.queued.keys().map(|(a, _)| *a).collect();
            s.dedup();
            s
        };
        for signer in senders {
            self.promote(signer);
        }
        evicted
    }

    /// Re-apply every pending transaction to `base_state`, in order; what no longer applies is
    /// evicted with its reason (or queued again, `since` now, if only a nonce gap remains).
    /// Returns how many were evicted.
    fn rebuild(&mut self, now_height: u64) -> usize {
        let old = std::mem::take(&mut self.queue);
        self.hashes.clear();
        self.bytes = self.queued.values().map(|q| q.vtx.len()).sum();
        self.per_sender.clear();
        let queued_senders: Vec<Address> = self.queued.keys().map(|(a, _)| *a).collect();
        for signer in queued_senders {
            self.count_in(signer);
        }
        self.pending_state = self.base_state.clone();
        let mut evicted = 0;
        for vtx in old {
            let hash = vtx.hash();
            // A transaction evicted from the middle of a sender's run leaves the rest of the
            // run with a gap: they are queued again, as of now.
            if let Err(e) = self.admit_verified(vtx, now_height) {
                self.remember_rejection(hash, e.to_string());
                evicted += 1;
            }
        }
        evicted
    }

    /// Remember why a transaction was turned away (bounded, oldest forgotten first).
    pub fn remember_rejection(&mut self, hash: Hash, reason: String) {
        if self.rejected.insert(hash, reason).is_none() {
            self.rejected_order.push_back(hash);
        }
        while self.rejected_order.len() > self.limits.remembered_rejections {
            if let Some(old) = self.rejected_order.pop_front() {
                self.rejected.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pot_protocol::genesis::{Coordinator, GenesisBalance};
    use pot_protocol::tx::{Tx, TxBody};
    use pot_protocol::{Amount, Genesis, SecretKey, build_block};
    use proptest::prelude::{Just, Strategy};

    fn key(i: u8) -> SecretKey {
        SecretKey::from_seed([i; 32])
    }

    fn genesis() -> State {
        let g = Genesis {
            chain_id: "test".into(),
            genesis_time_ms: 1_000,
            params: Default::default(),
            balances: [1, 3, 4, 5, 6]
                .into_iter()
                .map(|i| GenesisBalance {
                    address: key(i).address(),
                    amount: Amount(1_000),
                })
                .collect(),
            stakes: vec![],
            coordinators: vec![Coordinator::for_key(&key(9))],
        };
        g.validate().unwrap();
        State::from_genesis(&g)
    }

    fn proposer() -> pot_protocol::ProposerKey {
        pot_protocol::ProposerKey::new(&key(9))
    }

    /// A transfer of 1 from `key(from)` offering `fee`.
    fn paying(from: u8, nonce: u64, fee: u64) -> SignedTx {
        Tx {
            chain_id: "test".into(),
            signer: key(from).address(),
            nonce,
            fee: Amount(fee),
            body: TxBody::Transfer {
                to: key(2).address(),
                amount: Amount(1),
            },
        }
        .sign(&key(from))
    }

    /// Two submissions of one transaction, both checked before either got in (two admission
    /// threads): the second is `Known`, so the transaction is passed on once.
    #[test]
    fn a_transaction_admitted_while_its_twin_was_verified_is_known() {
        let mut pool = Mempool::new(&genesis(), 2_000, Limits::default());
        let tx = paying(1, 0, 10);
        let (first, second) = (
            VerifiedTx::new(tx.clone()).unwrap(),
            VerifiedTx::new(tx.clone()).unwrap(),
        );
        assert_eq!(pool.admit_checked(first), Ok(Admission::New(tx.hash())));
        assert_eq!(pool.admit_checked(second), Ok(Admission::Known(tx.hash())));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn one_sender_cannot_fill_the_pool() {
        let state = genesis();
        let limits = Limits {
            max_per_sender: 3,
            max_queued_per_sender: 2,
            ..Limits::default()
        };
        let mut pool = Mempool::new(&state, 2_000, limits);
        for n in 0..3 {
            pool.admit(paying(1, n, 10)).unwrap();
        }
        assert!(matches!(
            pool.admit(paying(1, 3, 10)),
            Err(AdmitError::SenderFull {
                count: 3,
                max: 3,
                ..
            })
        ));
        // Queued ones have their own, smaller bound.
        pool.admit(paying(3, 5, 10)).unwrap();
        pool.admit(paying(3, 6, 10)).unwrap();
        assert!(matches!(
            pool.admit(paying(3, 7, 10)),
            Err(AdmitError::SenderFull {
                count: 2,
                max: 2,
                ..
            })
        ));
        // Other senders are unaffected.
        pool.admit(paying(4, 0, 10)).unwrap();
        // Once a block takes some, the sender may send more.
        let built = build_block(
            &state,
            &proposer(),
            3_000,
            [paying(1, 0, 10), paying(1, 1, 10)],
        );
        pool.on_block(
            &built.state,
            &[paying(1, 0, 10).hash(), paying(1, 1, 10).hash()],
            3_001,
        );
        pool.admit(paying(1, 3, 10)).unwrap();
    }

    #[test]
    fn a_full_pool_evicts_the_cheapest_for_a_higher_fee() {
        let state = genesis();
        let limits = Limits {
            max_txs: 3,
            ..Limits::default()
        };
        let mut pool = Mempool::new(&state, 2_000, limits);
        let (a0, a1, b0) = (paying(1, 0, 10), paying(1, 1, 12), paying(3, 0, 11));
        for t in [&a0, &a1, &b0] {
            pool.admit(t.clone()).unwrap();
        }
        // A high fee on a nonce far ahead (it could only be queued, and may never pay) or from
        // an account that cannot pay evicts nothing.
        assert!(matches!(
            pool.admit(paying(5, 3, 1_000)),
            Err(AdmitError::Full { .. })
        ));
        assert!(matches!(
            pool.admit(paying(7, 0, 1_000)),
            Err(AdmitError::Invalid(TxError::InsufficientFunds { .. }))
        ));
        assert_eq!(pool.len(), 3);
        // Offering no more than the cheapest evictable (b0 at 11: a0 has a1 after it) is
        // turned away.
        assert!(matches!(
            pool.admit(paying(4, 0, 11)),
            Err(AdmitError::Full { .. })
        ));
        // A transaction that would not apply evicts nothing, whatever it offers.
        let broke = Tx {
            chain_id: "test".into(),
            signer: key(4).address(),
            nonce: 0,
            fee: Amount(500),
            body: TxBody::Transfer {
                to: key(2).address(),
                amount: Amount(1_000),
            },
        }
        .sign(&key(4));
        assert!(matches!(
            pool.admit(broke),
            Err(AdmitError::Invalid(TxError::InsufficientFunds { .. }))
        ));
        assert_eq!(pool.len(), 3);
        // Offering more evicts b0, which nothing waits on.
        let c0 = paying(4, 0, 20);
        pool.admit(c0.clone()).unwrap();
        assert_eq!(pool.len(), 3);
        assert!(matches!(pool.seen(&b0.hash()), Some(Seen::Rejected(r)) if r.contains("evicted")));
        for t in [&a0, &a1, &c0] {
            assert_eq!(pool.seen(&t.hash()), Some(Seen::Pending));
        }
        // The pending state was rebuilt without b0: its sender may send nonce 0 again.
        pool.admit(paying(3, 0, 30)).unwrap();
        assert!(matches!(pool.seen(&a1.hash()), Some(Seen::Rejected(_))));
    }

    /// Key 3 gives key 7 (which has nothing) 500, offering 11.
    fn funding_of_key_7() -> SignedTx {
        Tx {
            chain_id: "test".into(),
            signer: key(3).address(),
            nonce: 0,
            fee: Amount(11),
            body: TxBody::Transfer {
                to: key(7).address(),
                amount: Amount(500),
            },
        }
        .sign(&key(3))
    }

    #[test]
    fn a_newcomer_that_needs_its_victim_evicts_nothing() {
        let state = genesis();
        let limits = Limits {
            max_txs: 3,
            ..Limits::default()
        };
        let mut pool = Mempool::new(&state, 2_000, limits);
        // b0 funds key 7; key 7's transaction is valid only while b0 is there.
        let funding = funding_of_key_7();
        for t in [paying(1, 0, 10), paying(1, 1, 12), funding.clone()] {
            pool.admit(t).unwrap();
        }
        assert!(matches!(
            pool.admit(paying(7, 0, 20)),
            Err(AdmitError::Invalid(TxError::InsufficientFunds { .. }))
        ));
        assert_eq!(pool.seen(&funding.hash()), Some(Seen::Pending));
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn an_eviction_that_would_break_other_transactions_is_refused() {
        let state = genesis();
        let limits = Limits {
            max_txs: 3,
            ..Limits::default()
        };
        let mut pool = Mempool::new(&state, 2_000, limits);
        // key 7 has nothing but what `funding` (the cheapest, fee 11) gives it.
        let funding = funding_of_key_7();
        let dependent = paying(7, 0, 100);
        for t in [paying(1, 0, 50), funding.clone(), dependent.clone()] {
            pool.admit(t).unwrap();
        }
        // Evicting `funding` for 12 would push out `dependent` (100) too: refused.
        assert!(matches!(
            pool.admit(paying(4, 0, 12)),
            Err(AdmitError::Full { .. })
        ));
        for t in [&funding, &dependent] {
            assert_eq!(pool.seen(&t.hash()), Some(Seen::Pending));
        }
    }

    #[test]
    fn queued_transactions_must_pay_and_go_first_when_full() {
        let state = genesis();
        let limits = Limits {
            max_txs: 3,
            ..Limits::default()
        };
        let mut pool = Mempool::new(&state, 2_000, limits);
        // A fee its sender cannot pay buys a queued transaction nothing.
        assert!(matches!(
            pool.admit(paying(3, 4, 5_000)),
            Err(AdmitError::Invalid(TxError::InsufficientFunds { .. }))
        ));
        let queued = paying(3, 4, 900);
        for t in [paying(1, 0, 10), paying(1, 1, 12), queued.clone()] {
            pool.admit(t).unwrap();
        }
        assert_eq!(
            pool.seen(&queued.hash()),
            Some(Seen::Queued { next_nonce: 0 })
        );
        // Full: a cheap transaction that applies now evicts the queued one, whatever it offered.
        let cheap = paying(4, 0, 10);
        pool.admit(cheap.clone()).unwrap();
        assert!(
            matches!(pool.seen(&queued.hash()), Some(Seen::Rejected(r)) if r.contains("evicted"))
        );
        assert_eq!(pool.seen(&cheap.hash()), Some(Seen::Pending));
    }

    fn transfer(nonce: u64, amount: u64) -> SignedTx {
        Tx {
            chain_id: "test".into(),
            signer: key(1).address(),
            nonce,
            fee: Amount(10),
            body: TxBody::Transfer {
                to: key(2).address(),
                amount: Amount(amount),
            },
        }
        .sign(&key(1))
    }

    #[test]
    fn admission_checks_against_what_is_already_pending() {
        let state = genesis();
        let mut pool = Mempool::new(&state, 2_000, Limits::default());
        pool.admit(transfer(0, 600)).unwrap();
        // Alone it would apply; after the pending 600 (and its fee) it overdraws.
        assert!(matches!(
            pool.admit(transfer(1, 600)),
            Err(AdmitError::Invalid(TxError::InsufficientFunds { .. }))
        ));
        // A nonce too far ahead is refused, the next nonce is fine, a resubmission is idempotent.
        assert!(matches!(
            pool.admit(transfer(2 + MAX_NONCE_GAP, 1)),
            Err(AdmitError::Invalid(TxError::WrongNonce { .. }))
        ));
        let h = pool.admit(transfer(1, 40)).unwrap();
        assert_eq!(pool.admit(transfer(1, 40)).unwrap(), h);
        assert_eq!(pool.len(), 2);
    }

    fn nonces(pool: &Mempool) -> Vec<u64> {
        pool.candidates().map(|v| v.tx().tx.nonce).collect()
    }

    #[test]
    fn a_nonce_ahead_is_queued_until_the_gap_fills() {
        let state = genesis();
        let mut pool = Mempool::new(&state, 2_000, Limits::default());
        let (t0, t1, t2) = (transfer(0, 1), transfer(1, 1), transfer(2, 1));
        pool.admit(t2.clone()).unwrap();
        pool.admit(t1.clone()).unwrap();
        assert_eq!(pool.pending(), 0);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.seen(&t2.hash()), Some(Seen::Queued { next_nonce: 0 }));
        // A sender the ledger has never seen cannot queue.
        let stranger = Tx {
            chain_id: "test".into(),
            signer: key(7).address(),
            nonce: 1,
            fee: Amount(10),
            body: TxBody::Transfer {
                to: key(2).address(),
                amount: Amount(1),
            },
        }
        .sign(&key(7));
        assert!(matches!(
            pool.admit(stranger),
            Err(AdmitError::Invalid(TxError::WrongNonce { .. }))
        ));
        // Another transaction for a queued nonce is refused; the queued one is kept.
        assert!(matches!(
            pool.admit(transfer(2, 5)),
            Err(AdmitError::NonceTaken { nonce: 2, .. })
        ));
        pool.admit(t0).unwrap();
        assert_eq!(nonces(&pool), vec![0, 1, 2]);
        assert_eq!(pool.seen(&t2.hash()), Some(Seen::Pending));
    }

    #[test]
    fn a_queued_transaction_is_dropped_when_its_nonce_is_used_or_it_waits_too_long() {
        let state = genesis();
        let limits = Limits {
            queued_for_blocks: 3,
            ..Limits::default()
        };
        let mut pool = Mempool::new(&state, 2_000, limits);
        let (t1, t2) = (transfer(1, 1), transfer(2, 1));
        pool.admit(t1.clone()).unwrap();
        pool.admit(t2.clone()).unwrap();
        // A block spends nonces 0 and 1 with other transactions: t1 is stale, t2 now pending.
        let built = build_block(&state, &proposer(), 3_000, [transfer(0, 2), transfer(1, 2)]);
        assert_eq!(built.block.txs.len(), 2);
        let included: Vec<Hash> = built.block.txs.iter().map(SignedTx::hash).collect();
        assert_eq!(pool.on_block(&built.state, &included, 3_001), 1);
        assert!(matches!(pool.seen(&t1.hash()), Some(Seen::Rejected(r)) if r.contains("used")));
        assert_eq!(pool.seen(&t2.hash()), Some(Seen::Pending));

        // A gap that never fills: dropped after `queued_for_blocks` blocks, with the reason.
        let t9 = transfer(9, 1);
        pool.admit(t9.clone()).unwrap();
        let mut tip = built.state;
        for i in 0..4 {
            let empty = build_block(&tip, &proposer(), 4_000 + i, []);
            tip = empty.state;
            pool.on_block(&tip, &[], 4_001 + i);
        }
        assert!(
            matches!(pool.seen(&t9.hash()), Some(Seen::Rejected(r)) if r.contains("never came"))
        );
        assert_eq!(nonces(&pool), vec![2]);
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_queued_transaction_included_by_another_proposer_leaves_quietly() {
        let state = genesis();
        let mut pool = Mempool::new(&state, 2_000, Limits::default());
        let (t0, t1) = (transfer(0, 1), transfer(1, 1));
        pool.admit(t1.clone()).unwrap();
        let built = build_block(&state, &proposer(), 3_000, [t0.clone(), t1.clone()]);
        assert_eq!(
            pool.on_block(&built.state, &[t0.hash(), t1.hash()], 3_001),
            0
        );
        assert!(pool.is_empty());
        assert_eq!(pool.bytes(), 0);
        assert_eq!(pool.seen(&t1.hash()), None);
    }

    proptest::proptest! {
        /// Whatever order a sender's transactions arrive in (gossip does not keep it), once
        /// they have all arrived they are all pending, in nonce order.
        #[test]
        fn any_arrival_order_ends_in_nonce_order(order in Just((0..12u64).collect::<Vec<_>>()).prop_shuffle()) {
            let state = genesis();
            let mut pool = Mempool::new(&state, 2_000, Limits::default());
            for n in &order {
                pool.admit(transfer(*n, 1)).unwrap();
            }
            proptest::prop_assert_eq!(nonces(&pool), (0..12).collect::<Vec<_>>());
            proptest::prop_assert_eq!(pool.len(), 12);
        }
    }

    #[test]
    fn a_block_removes_included_and_evicts_what_became_invalid() {
        let state = genesis();
        let mut pool = Mempool::new(&state, 2_000, Limits::default());
        let a = transfer(0, 10);
        let b = transfer(1, 10);
        pool.admit(a.clone()).unwrap();
        pool.admit(b.clone()).unwrap();
        // Another block (from another proposer) spends the balance with a different nonce-0 tx.
        let rival = transfer(0, 985);
        let built = build_block(&state, &proposer(), 3_000, [rival.clone()]);
        assert_eq!(built.block.txs.len(), 1);
        let evicted = pool.on_block(&built.state, &[rival.hash()], 3_001);
        assert_eq!(evicted, 2, "a's nonce is used, b is now 1 and overdraws");
        assert!(pool.is_empty());
        assert!(matches!(pool.seen(&a.hash()), Some(Seen::Rejected(_))));

        let mut pool = Mempool::new(&state, 2_000, Limits::default());
        pool.admit(a.clone()).unwrap();
        pool.admit(b.clone()).unwrap();
        let built = build_block(&state, &proposer(), 3_000, [a.clone()]);
        pool.on_block(&built.state, &[a.hash()], 3_001);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.seen(&b.hash()), Some(Seen::Pending));
    }

    #[test]
    fn a_forged_signature_is_refused() {
        let state = genesis();
        let mut pool = Mempool::new(&state, 2_000, Limits::default());
        let mut forged = transfer(0, 1);
        forged.tx.body = TxBody::Transfer {
            to: key(3).address(),
            amount: Amount(1),
        };
        assert!(matches!(
            pool.admit(forged),
            Err(AdmitError::Invalid(TxError::BadSignature(_)))
        ));
        assert!(pool.is_empty());
    }

    #[test]
    fn queued_transactions_have_their_own_bound() {
        let state = genesis();
        let limits = Limits {
            max_queued: 2,
            ..Limits::default()
        };
        let mut pool = Mempool::new(&state, 2_000, limits);
        pool.admit(transfer(1, 1)).unwrap();
        pool.admit(transfer(2, 1)).unwrap();
        assert!(matches!(
            pool.admit(transfer(3, 1)),
            Err(AdmitError::Full { count: 2, .. })
        ));
        // Ready transactions are still taken, and promote the queued ones.
        pool.admit(transfer(0, 1)).unwrap();
        assert_eq!(nonces(&pool), vec![0, 1, 2]);
    }

    #[test]
    fn a_full_pool_refuses() {
        let state = genesis();
        let limits = Limits {
            max_txs: 1,
            ..Limits::default()
        };
        let mut pool = Mempool::new(&state, 2_000, limits);
        pool.admit(transfer(0, 1)).unwrap();
        assert!(matches!(
            pool.admit(transfer(1, 1)),
            Err(AdmitError::Full { count: 1, .. })
        ));
    }
}
