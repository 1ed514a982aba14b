//! The node's ledger: the state at the last decided block, the store behind it, and the
//! mempool. Consensus calls `propose`, `check_proposal` and `commit`; the HTTP API reads
//! snapshots and submits transactions. Each is a short critical section; nothing here knows
//! about the consensus engine.

pub mod admission;
pub mod follow;
pub mod mempool;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

use pot_protocol::api::TxStatus;
use pot_protocol::commit::Commit;
use pot_protocol::{
    Address, Block, BlockError, Genesis, Hash, ProposerKey, SignedTx, State, TxError, VerifiedTx,
    apply_block_known, build_block_verified,
};

use mempool::{AdmitError, Limits, Mempool, Seen};
use store::{Store, StoreError};

/// How far ahead of a validator's clock a proposed block's time may be.
pub const MAX_CLOCK_DRIFT_MS: u64 = 5_000;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A transaction this node holds after a submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Admitted now: this node should pass it on.
    New(Hash),
    /// Held or decided already (or repeated in the same batch): nothing to pass on.
    Known(Hash),
}

impl Admission {
    pub fn hash(&self) -> Hash {
        match self {
            Admission::New(h) | Admission::Known(h) => *h,
        }
    }
}

/// Why a proposed block is not voted for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("block is at height {got}, the next height is {expected}")]
    WrongHeight { expected: u64, got: u64 },
    #[error("block names proposer {named}, but {actual} proposed it")]
    WrongProposer { named: Address, actual: Address },
    #[error(
        "block time {time_ms} ms is more than {MAX_CLOCK_DRIFT_MS} ms ahead of this node's clock ({now_ms} ms)"
    )]
    FromTheFuture { time_ms: u64, now_ms: u64 },
    #[error(transparent)]
    Block(#[from] BlockError),
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("decided block {height} does not apply to this node's state: {error}")]
    DecidedBlockInvalid { height: u64, error: BlockError },
    #[error(
        "fork: the network decided block {decided} at height {height}, but this node stored \
         {stored} there; stopping rather than follow either"
    )]
    Fork {
        height: u64,
        stored: Hash,
        decided: Hash,
    },
    #[error("decided block {height} is missing from the store below the tip")]
    MissingBlock { height: u64 },
    #[error(
        "the stored state does not match block {height}: its root is {computed}, the block says \
         {expected}; the chain database is corrupt (sync a fresh data directory from the other \
         coordinators)"
    )]
    StateCorrupt {
        height: u64,
        expected: Hash,
        computed: Hash,
    },
    #[error(
        "the stored state's tip is {stored}, but the block at its height {height} is {expected}; \
         the chain database is corrupt (sync a fresh data directory from the other coordinators)"
    )]
    TipCorrupt {
        height: u64,
        expected: Hash,
        stored: Hash,
    },
}

/// The state after the last decided block and its root, swapped together. The root is that
/// block's `state_root` (checked when the block was applied), so readers never rehash the state.
#[derive(Clone)]
pub struct Snapshot {
    pub state: Arc<State>,
    pub state_root: Hash,
}

pub struct Chain {
    genesis: Genesis,
    genesis_hash: Hash,
    store: Store,
    snapshot: RwLock<Snapshot>,
    mempool: Mutex<Mempool>,
    /// Held through `commit`, so the state a block's rows are diffed against is the one the
    /// store holds.
    committing: Mutex<()>,
}

impl Chain {
    /// Open the chain in `data_dir`, resuming from the stored state if there is one. The
    /// stored state's root is checked against the last block's header (once, at start), so a
    /// corrupt database is refused rather than followed.
    pub fn open(genesis: Genesis, data_dir: &Path, limits: Limits) -> Result<Chain, ChainError> {
        let genesis_hash = genesis.hash();
        let store = Store::open(data_dir, genesis_hash)?;
        let state = match store.load_state()? {
            Some(s) => s,
            None => {
                let s = State::from_genesis(&genesis);
                store.init_state(&s)?;
                s
            }
        };
        let state_root = state.state_root();
        let height = state.tip.height;
        let (expected_root, expected_tip) = if height == 0 {
            (State::from_genesis(&genesis).state_root(), genesis_hash)
        } else {
            let block = store
                .block(height)?
                .ok_or(ChainError::MissingBlock { height })?;
            (block.header.state_root, block.hash())
        };
        if expected_root != state_root {
            return Err(ChainError::StateCorrupt {
                height,
                expected: expected_root,
                computed: state_root,
            });
        }
        if expected_tip != state.tip.hash {
            return Err(ChainError::TipCorrupt {
                height,
                expected: expected_tip,
                stored: state.tip.hash,
            });
        }
        let mempool = Mempool::new(&state, now_ms(), limits);
        let snapshot = Snapshot {
            state_root,
            state: Arc::new(state),
        };
        Ok(Chain {
            genesis,
            genesis_hash,
            store,
            snapshot: RwLock::new(snapshot),
            mempool: Mutex::new(mempool),
            committing: Mutex::new(()),
        })
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The state after the last decided block and its root (cheap: shared, not copied).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().expect("state lock").clone()
    }

    /// The state after the last decided block.
    pub fn state(&self) -> Arc<State> {
        self.snapshot().state
    }

    pub fn height(&self) -> u64 {
        self.state().tip.height
    }

    pub fn mempool_size(&self) -> (usize, usize) {
        let m = self.mempool.lock().expect("mempool lock");
        (m.len(), m.bytes())
    }

    /// Admit a transaction to the mempool: [`Chain::submit_batch`] of one.
    /// Blocking work (call it from a blocking thread in async code).
    pub fn submit(&self, stx: SignedTx) -> Result<Admission, AdmitError> {
        self.submit_batch([&stx])
            .pop()
            .expect("one verdict per transaction")
    }

    /// Admit many transactions (a gossip burst, the API's waiting submissions), their
    /// signatures verified in one batch outside the mempool's lock (so a flood never holds up
    /// block building); each gets the verdict it would get alone. A transaction repeated in `txs` is
    /// verified once: a repeat is `Known` if its first copy was admitted (now or before), and
    /// otherwise refused as the first copy was. Only the transactions admitted are copied, so
    /// the caller keeps its own (to pass on the new ones).
    pub fn submit_batch<'a>(
        &self,
        txs: impl IntoIterator<Item = &'a SignedTx>,
    ) -> Vec<Result<Admission, AdmitError>> {
        let txs: Vec<&SignedTx> = txs.into_iter().collect();
        enum Pending {
            Judged(Result<Admission, AdmitError>),
            Verify,
            RepeatOf(usize),
        }
        let mut pending: Vec<Pending> = Vec::with_capacity(txs.len());
        let mut to_verify = Vec::new();
        let mut first: HashMap<Hash, usize> = HashMap::with_capacity(txs.len());
        let hashes: Vec<Hash> = txs.iter().map(|t| t.hash()).collect();
        // Decided already? One read of the store for the whole batch; a read that fails
        // only means the transaction is checked as if new (its nonce then refuses a replay).
        let decided = self.store.tx_locations(&hashes).unwrap_or_else(|e| {
            warn!(error = %e, "reading the transaction index; admitting as if nothing was decided");
            vec![None; hashes.len()]
        });
        {
            let m = self.mempool.lock().expect("mempool lock");
            for (i, ((stx, hash), decided)) in txs
                .into_iter()
                .zip(hashes.iter().copied())
                .zip(decided)
                .enumerate()
            {
                if let Some(&at) = first.get(&hash) {
                    pending.push(Pending::RepeatOf(at));
                    continue;
                }
                first.insert(hash, i);
                if decided.is_some() {
                    pending.push(Pending::Judged(Ok(Admission::Known(hash))));
                    continue;
                }
                match m.precheck(stx, hash) {
                    Ok(Some(hash)) => pending.push(Pending::Judged(Ok(Admission::Known(hash)))),
                    Err(e) => pending.push(Pending::Judged(Err(e))),
                    Ok(None) => {
                        pending.push(Pending::Verify);
                        to_verify.push(stx.clone());
                    }
                }
            }
        }
        let mut verified = VerifiedTx::new_batch(to_verify).into_iter();
        let mut m = self.mempool.lock().expect("mempool lock");
        let mut verdicts: Vec<Result<Admission, AdmitError>> = Vec::with_capacity(pending.len());
        for p in pending {
            let verdict = match p {
                Pending::Judged(v) => v,
                Pending::Verify => match verified.next().expect("one verdict per transaction") {
                    Ok(vtx) => m.admit_checked(vtx),
                    Err(e) => Err(AdmitError::Invalid(e)),
                },
                // A repeat comes after its first copy, whose verdict is in already.
                Pending::RepeatOf(at) => match &verdicts[at] {
                    Ok(a) => Ok(Admission::Known(a.hash())),
                    Err(e) => Err(e.clone()),
                },
            };
            verdicts.push(verdict);
        }
        drop(m);
        self.known_if_decided_meanwhile(&mut verdicts, &hashes);
        verdicts
    }

    /// A transaction refused for a nonce already used may have been decided between the
    /// batch's read of the transaction index and its admission (a block committed meanwhile):
    /// then it is `Known`, as a moment later it would have been, not refused (a client retrying
    /// one that did get in is told so).
    fn known_if_decided_meanwhile(
        &self,
        verdicts: &mut [Result<Admission, AdmitError>],
        hashes: &[Hash],
    ) {
        let stale: Vec<usize> = (0..verdicts.len())
            .filter(|&i| {
                matches!(&verdicts[i],
                    Err(AdmitError::Invalid(TxError::WrongNonce { expected, got, .. }))
                        if got < expected)
            })
            .collect();
        if stale.is_empty() {
            return;
        }
        let asked: Vec<Hash> = stale.iter().map(|&i| hashes[i]).collect();
        // A read that fails leaves the refusals as they are: the nonce was used either way.
        let Ok(decided) = self.store.tx_locations(&asked) else {
            return;
        };
        for (i, decided) in stale.into_iter().zip(decided) {
            if decided.is_some() {
                verdicts[i] = Ok(Admission::Known(hashes[i]));
            }
        }
    }

    pub fn tx_status(&self, hash: &Hash) -> Result<Option<TxStatus>, StoreError> {
        if let Some((height, index)) = self.store.tx_location(hash)? {
            return Ok(Some(TxStatus::Included { height, index }));
        }
        Ok(
            match self.mempool.lock().expect("mempool lock").seen(hash) {
                Some(Seen::Pending) => Some(TxStatus::Pending),
                Some(Seen::Queued { next_nonce }) => Some(TxStatus::Queued { next_nonce }),
                Some(Seen::Rejected(reason)) => Some(TxStatus::Rejected { reason }),
                None => None,
            },
        )
    }

    /// Build the next block from the mempool, as `proposer`, with the state after it.
    pub fn propose(&self, proposer: &ProposerKey, now_ms: u64) -> (Block, State) {
        let state = self.state();
        let time = now_ms.max(state.tip.time_ms + 1);
        let candidates: Vec<VerifiedTx> = self
            .mempool
            .lock()
            .expect("mempool lock")
            .candidates()
            .cloned()
            .collect();
        let built = build_block_verified(&state, proposer, time, candidates);
        if !built.rejected.is_empty() {
            let mut m = self.mempool.lock().expect("mempool lock");
            for (hash, error) in &built.rejected {
                m.remember_rejection(*hash, error.to_string());
            }
        }
        (built.block, built.state)
    }

    /// Re-execute a block someone proposed; the state after it if it is valid.
    pub fn check_proposal(
        &self,
        block: &Block,
        proposer: Address,
        now_ms: u64,
    ) -> Result<State, ProposalError> {
        let state = self.state();
        let h = &block.header;
        if h.height != state.tip.height + 1 {
            return Err(ProposalError::WrongHeight {
                expected: state.tip.height + 1,
                got: h.height,
            });
        }
        if h.proposer != proposer {
            return Err(ProposalError::WrongProposer {
                named: h.proposer,
                actual: proposer,
            });
        }
        if h.time_ms > now_ms + MAX_CLOCK_DRIFT_MS {
            return Err(ProposalError::FromTheFuture {
                time_ms: h.time_ms,
                now_ms,
            });
        }
        // Transactions this node's mempool holds had their signatures checked on admission.
        let known: HashSet<Hash> = {
            let m = self.mempool.lock().expect("mempool lock");
            block
                .txs
                .iter()
                .map(SignedTx::hash)
                .filter(|h| m.holds(h))
                .collect()
        };
        Ok(apply_block_known(&state, block, |h| known.contains(h))?)
    }

    /// Execute a block the network decided (it came through sync with a certificate the engine
    /// checked): the state after it. Its proposer and time were judged when it was proposed,
    /// so only whether it applies to this node's state is checked.
    pub fn check_decided(&self, block: &Block) -> Result<State, ProposalError> {
        let state = self.state();
        if block.header.height != state.tip.height + 1 {
            return Err(ProposalError::WrongHeight {
                expected: state.tip.height + 1,
                got: block.header.height,
            });
        }
        Ok(pot_protocol::apply_block(&state, block)?)
    }

    /// Record a decided block with its commit certificate. `after` is the state after it when
    /// the caller already executed it (a proposal it checked); otherwise the block is executed
    /// here. A decided block at or below the tip (the engine may replay a decision after a
    /// crash) must be the one stored there: anything else is a fork, and an error.
    pub fn commit(
        &self,
        block: &Block,
        commit: &Commit,
        after: Option<State>,
    ) -> Result<(), ChainError> {
        let _one_at_a_time = self.committing.lock().expect("commit lock");
        let state = self.state();
        let height = block.header.height;
        if height <= state.tip.height {
            let stored = self
                .store
                .block(height)?
                .ok_or(ChainError::MissingBlock { height })?
                .hash();
            let decided = block.hash();
            if stored != decided {
                return Err(ChainError::Fork {
                    height,
                    stored,
                    decided,
                });
            }
            return Ok(());
        }
        let next = match after {
            Some(s) if s.tip.hash == block.hash() => s,
            _ => pot_protocol::apply_block(&state, block)
                .map_err(|error| ChainError::DecidedBlockInvalid { height, error })?,
        };
        self.store.commit(block, commit, &state, &next)?;
        let next = Arc::new(next);
        *self.snapshot.write().expect("state lock") = Snapshot {
            state: next.clone(),
            state_root: block.header.state_root,
        };
        let included: Vec<Hash> = block.txs.iter().map(SignedTx::hash).collect();
        self.mempool
            .lock()
            .expect("mempool lock")
            .on_block(&next, &included, now_ms());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pot_protocol::genesis::{Coordinator, GenesisBalance};
    use pot_protocol::tx::Role;
    use pot_protocol::{Amount, SecretKey, Tx, TxBody};

    /// A chain whose coordinator also holds the funds, and its key.
    fn funded_chain(dir: &Path) -> (Chain, SecretKey) {
        let key = SecretKey::from_seed([3; 32]);
        let genesis = Genesis {
            chain_id: "t".into(),
            genesis_time_ms: 0,
            params: pot_protocol::Params {
                unbonding_blocks: 2,
                ..Default::default()
            },
            balances: vec![GenesisBalance {
                address: key.address(),
                amount: Amount(1_000_000_000),
            }],
            stakes: vec![],
            coordinators: vec![Coordinator::for_key(&key)],
        };
        (Chain::open(genesis, dir, Limits::default()).unwrap(), key)
    }

    /// A transfer of `amount` from `key` to itself, with `nonce`.
    fn to_self(key: &SecretKey, nonce: u64, amount: u64) -> SignedTx {
        Tx {
            chain_id: "t".into(),
            signer: key.address(),
            nonce,
            fee: Amount(1_000),
            body: TxBody::Transfer {
                to: key.address(),
                amount: Amount(amount),
            },
        }
        .sign(key)
    }

    /// Propose a block from the mempool and commit it.
    fn next_block(chain: &Chain, key: &SecretKey) -> Block {
        let time = chain.state().tip.time_ms + 1_000;
        let (block, after) = chain.propose(&ProposerKey::new(key), time);
        let commit = Commit {
            height: block.header.height,
            round: 0,
            block: block.hash(),
            signatures: vec![],
        };
        chain.commit(&block, &commit, Some(after)).unwrap();
        block
    }

    #[test]
    fn a_submission_says_whether_it_was_new_here() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = funded_chain(dir.path());
        let tx = |nonce| to_self(&key, nonce, 1);
        let (a, b) = (tx(0), tx(1));
        // Repeated in one batch: admitted once, the repeat known (and not verified again).
        let got = chain.submit_batch(&[a.clone(), a.clone(), b.clone()]);
        assert_eq!(
            got,
            vec![
                Ok(Admission::New(a.hash())),
                Ok(Admission::Known(a.hash())),
                Ok(Admission::New(b.hash())),
            ]
        );
        // Held already, then decided: known, so never gossiped again.
        assert_eq!(chain.submit(a.clone()), Ok(Admission::Known(a.hash())));
        next_block(&chain, &key);
        assert_eq!(chain.submit(a.clone()), Ok(Admission::Known(a.hash())));
        assert_eq!(
            chain.submit(tx(2)).map(|a| matches!(a, Admission::New(_))),
            Ok(true)
        );
    }

    /// A transaction decided while its submission was being judged (its nonce used by then) is
    /// `Known`, not refused; one whose nonce another transaction used stays refused.
    #[test]
    fn a_transaction_decided_while_it_was_judged_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = funded_chain(dir.path());
        let (decided, rival) = (to_self(&key, 0, 1), to_self(&key, 0, 2));
        chain.submit(decided.clone()).unwrap();
        next_block(&chain, &key);
        // As the mempool refuses both once the block is in.
        let used = |stx: &SignedTx| {
            Err(AdmitError::Invalid(TxError::WrongNonce {
                signer: stx.tx.signer,
                expected: 1,
                got: 0,
            }))
        };
        let mut verdicts = vec![used(&decided), used(&rival)];
        chain.known_if_decided_meanwhile(&mut verdicts, &[decided.hash(), rival.hash()]);
        assert_eq!(verdicts[0], Ok(Admission::Known(decided.hash())));
        assert_eq!(verdicts[1], used(&rival));
    }

    /// A repeat is refused as its first copy was, not told it is held: a client whose retry
    /// landed in the same batch as a refused original must not be told it was taken.
    #[test]
    fn a_repeat_in_a_batch_gets_its_first_copys_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = funded_chain(dir.path());
        let mut forged = to_self(&key, 0, 1);
        forged.signature.0[5] ^= 1;
        let got = chain.submit_batch([&forged, &forged]);
        assert!(
            got.iter().all(|v| matches!(v, Err(AdmitError::Invalid(_)))),
            "{got:?}"
        );
        assert_eq!(chain.mempool_size().0, 0);
    }

    #[test]
    fn the_state_stored_block_by_block_reopens_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = funded_chain(dir.path());
        let mut nonce = 0;
        let mut send = |body: TxBody| {
            let tx = Tx {
                chain_id: "t".into(),
                signer: key.address(),
                nonce,
                fee: Amount(1_000),
                body,
            }
            .sign(&key);
            nonce += 1;
            chain.submit(tx).unwrap();
        };
        // New accounts, a bond, and an unbonding that matures (its queue entry and the emptied
        // stake are deleted rows).
        for i in 100..150u8 {
            send(TxBody::Transfer {
                to: SecretKey::from_seed([i; 32]).address(),
                amount: Amount(10_000),
            });
        }
        send(TxBody::Bond {
            role: Role::Validator,
            amount: Amount(5_000),
        });
        next_block(&chain, &key);
        send(TxBody::Unbond {
            role: Role::Validator,
            amount: Amount(5_000),
        });
        next_block(&chain, &key);
        assert!(!chain.state().unbonding_queue.is_empty());
        for _ in 0..3 {
            next_block(&chain, &key);
        }
        let state = chain.state();
        assert!(state.unbonding_queue.is_empty(), "the unbonding matured");
        assert!(state.stakes.is_empty(), "the emptied stake is gone");
        assert_eq!(state.accounts.len(), 51);
        let genesis = chain.genesis().clone();
        drop(chain);

        let reopened = Chain::open(genesis, dir.path(), Limits::default()).unwrap();
        assert_eq!(*reopened.state(), *state);
        assert_eq!(reopened.snapshot().state_root, state.state_root());
    }

    #[test]
    fn a_stored_state_that_does_not_match_the_last_block_is_refused() {
        for blocks in [0, 1] {
            let dir = tempfile::tempdir().unwrap();
            let (chain, key) = funded_chain(dir.path());
            for _ in 0..blocks {
                next_block(&chain, &key);
            }
            tamper_and_reopen(chain, dir.path(), blocks);
        }
    }

    /// Add an account row behind the chain's back; reopening must refuse the database.
    fn tamper_and_reopen(chain: Chain, dir: &Path, height: u64) {
        let stranger = SecretKey::from_seed([9; 32]).address();
        let account = pot_protocol::state::Account {
            balance: Amount(1),
            nonce: 0,
        };
        chain.store().put_raw_account_for_test(
            &borsh::to_vec(&stranger).unwrap(),
            &borsh::to_vec(&account).unwrap(),
        );
        let genesis = chain.genesis().clone();
        drop(chain);
        let err = Chain::open(genesis, dir, Limits::default())
            .err()
            .expect("refused");
        assert!(
            matches!(err, ChainError::StateCorrupt { height: h, .. } if h == height),
            "{err}"
        );
    }

    #[test]
    fn a_decided_block_below_the_tip_that_differs_from_the_stored_one_is_a_fork() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([3; 32]);
        let genesis = Genesis {
            chain_id: "t".into(),
            genesis_time_ms: 0,
            params: Default::default(),
            balances: vec![],
            stakes: vec![],
            coordinators: vec![Coordinator::for_key(&key)],
        };
        let chain = Chain::open(genesis, dir.path(), Limits::default()).unwrap();
        let proposer = ProposerKey::new(&key);
        let (a, after) = chain.propose(&proposer, 1_000);
        let commit = |b: &Block| Commit {
            height: 1,
            round: 0,
            block: b.hash(),
            signatures: vec![],
        };
        chain.commit(&a, &commit(&a), Some(after)).unwrap();
        // The engine replaying the same decision is harmless.
        chain.commit(&a, &commit(&a), None).unwrap();
        // Another block decided at that height is not.
        let state = State::from_genesis(chain.genesis());
        let b = pot_protocol::build_block(&state, &proposer, 2_000, vec![]).block;
        assert_ne!(a.hash(), b.hash());
        let err = chain.commit(&b, &commit(&b), None).unwrap_err();
        assert!(matches!(err, ChainError::Fork { height: 1, .. }), "{err}");
        assert_eq!(chain.height(), 1);
    }
}
