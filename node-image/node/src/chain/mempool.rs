//! Transactions waiting for a block. Admission runs the ledger's own checks against the
//! state the next block will start from plus everything already pending, so a transaction is
//! admitted only if it would apply (signature, chain, nonce, balance, task rules) in the order
//! it would be proposed. After each block the pending state is rebuilt from the new tip and
//! whatever no longer applies is evicted, with its reason kept for `GET /v1/tx/{hash}`. Pending
//! transactions are held as `VerifiedTx`, so that rebuild never re-checks a signature.

use std::collections::{HashMap, HashSet, VecDeque};

use pot_protocol::ledger::{TxCtx, begin_block};
use pot_protocol::{Hash, SignedTx, State, TxError, VerifiedTx, apply_verified_tx};

/// Bounds on what the mempool holds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_txs: usize,
    pub max_bytes: usize,
    /// Rejections remembered for status queries.
    pub remembered_rejections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_txs: 50_000,
            max_bytes: 64 * 1024 * 1024,
            remembered_rejections: 10_000,
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
}

/// What happened to a transaction the mempool saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Pending,
    Rejected(String),
}

pub struct Mempool {
    limits: Limits,
    /// The tip state, advanced into the next block, with every pending transaction applied.
    pending_state: State,
    /// Pending transactions in admission order (which is nonce order per sender).
    queue: Vec<VerifiedTx>,
    hashes: HashSet<Hash>,
    bytes: usize,
    rejected: HashMap<Hash, String>,
    rejected_order: VecDeque<Hash>,
}

fn next_block_state(tip: &State, now_ms: u64) -> State {
    let mut s = tip.clone();
    let time = now_ms.max(tip.tip.time_ms + 1);
    begin_block(&mut s, tip.tip.height + 1, time, tip.tip.hash);
    s
}

impl Mempool {
    pub fn new(tip: &State, now_ms: u64, limits: Limits) -> Mempool {
        Mempool {
            limits,
            pending_state: next_block_state(tip, now_ms),
            queue: Vec::new(),
            hashes: HashSet::new(),
            bytes: 0,
            rejected: HashMap::new(),
            rejected_order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Admit a transaction. Submitting one that is already pending is not an error.
    pub fn admit(&mut self, stx: SignedTx) -> Result<Hash, AdmitError> {
        let hash = stx.hash();
        if self.hashes.contains(&hash) {
            return Ok(hash);
        }
        // A full pool turns transactions away before paying for their signature check.
        self.check_room(stx.encode().len())?;
        self.admit_verified(VerifiedTx::new(stx)?)
    }

    fn check_room(&self, len: usize) -> Result<(), AdmitError> {
        if self.queue.len() >= self.limits.max_txs || self.bytes + len > self.limits.max_bytes {
            return Err(AdmitError::Full {
                count: self.queue.len(),
                bytes: self.bytes,
            });
        }
        Ok(())
    }

    /// Admit a checked transaction there is room for.
    fn admit_verified(&mut self, vtx: VerifiedTx) -> Result<Hash, AdmitError> {
        let ctx = TxCtx {
            height: self.pending_state.tip.height,
            time_ms: self.pending_state.tip.time_ms,
            index: self.queue.len() as u32,
        };
        apply_verified_tx(&mut self.pending_state, &ctx, &vtx)?;
        let hash = vtx.hash();
        self.hashes.insert(hash);
        self.bytes += vtx.len();
        self.queue.push(vtx);
        Ok(hash)
    }

    /// Candidates for the next block, in the order they were admitted.
    pub fn candidates(&self) -> impl Iterator<Item = &VerifiedTx> {
        self.queue.iter()
    }

    pub fn seen(&self, hash: &Hash) -> Option<Seen> {
        if self.hashes.contains(hash) {
            return Some(Seen::Pending);
        }
        self.rejected.get(hash).map(|r| Seen::Rejected(r.clone()))
    }

    /// A block was decided: drop what it included, rebuild the pending state on the new tip,
    /// and evict what no longer applies. Returns how many were evicted.
    pub fn on_block(&mut self, tip: &State, included: &[Hash], now_ms: u64) -> usize {
        let included: HashSet<&Hash> = included.iter().collect();
        let old = std::mem::take(&mut self.queue);
        self.hashes.clear();
        self.bytes = 0;
        self.pending_state = next_block_state(tip, now_ms);
        let mut evicted = 0;
        for vtx in old {
            let hash = vtx.hash();
            if included.contains(&hash) {
                continue;
            }
            if let Err(e) = self.admit_verified(vtx) {
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

    fn key(i: u8) -> SecretKey {
        SecretKey::from_seed([i; 32])
    }

    fn genesis() -> State {
        let g = Genesis {
            chain_id: "test".into(),
            genesis_time_ms: 1_000,
            params: Default::default(),
            balances: vec![GenesisBalance {
                address: key(1).address(),
                amount: Amount(100),
            }],
            stakes: vec![],
            coordinators: vec![Coordinator {
                address: key(9).address(),
                power: 1,
            }],
        };
        g.validate().unwrap();
        State::from_genesis(&g)
    }

    fn transfer(nonce: u64, amount: u64) -> SignedTx {
        Tx {
            chain_id: "test".into(),
            signer: key(1).address(),
            nonce,
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
        pool.admit(transfer(0, 60)).unwrap();
        // Alone it would apply; after the pending 60 it overdraws.
        assert!(matches!(
            pool.admit(transfer(1, 60)),
            Err(AdmitError::Invalid(TxError::InsufficientFunds { .. }))
        ));
        // A nonce gap is refused, the next nonce is fine, a resubmission is idempotent.
        assert!(matches!(
            pool.admit(transfer(5, 1)),
            Err(AdmitError::Invalid(TxError::WrongNonce { .. }))
        ));
        let h = pool.admit(transfer(1, 40)).unwrap();
        assert_eq!(pool.admit(transfer(1, 40)).unwrap(), h);
        assert_eq!(pool.len(), 2);
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
        let rival = transfer(0, 95);
        let built = build_block(&state, key(9).address(), 3_000, [rival.clone()]);
        assert_eq!(built.block.txs.len(), 1);
        let evicted = pool.on_block(&built.state, &[rival.hash()], 3_001);
        assert_eq!(evicted, 2, "a's nonce is used, b is now 1 and overdraws");
        assert!(pool.is_empty());
        assert!(matches!(pool.seen(&a.hash()), Some(Seen::Rejected(_))));

        let mut pool = Mempool::new(&state, 2_000, Limits::default());
        pool.admit(a.clone()).unwrap();
        pool.admit(b.clone()).unwrap();
        let built = build_block(&state, key(9).address(), 3_000, [a.clone()]);
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
