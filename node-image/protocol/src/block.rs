//! Blocks: a header that commits to the transactions and the resulting state, and a body.

use borsh::{BorshDeserialize, BorshSerialize};

use crate::beacon::VrfProof;
use crate::crypto::Address;
use crate::hash::Hash;
use crate::merkle;
use crate::tx::SignedTx;
use crate::units::Height;

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct BlockHeader {
    pub height: Height,
    /// Hash of the previous block's header (the genesis hash for height 1).
    pub prev_hash: Hash,
    /// Proposal time, Unix milliseconds; strictly increasing.
    pub time_ms: u64,
    pub proposer: Address,
    /// The proposer's VRF proof over `(chain id, height, previous beacon)`.
    pub vrf_proof: VrfProof,
    /// This block's randomness beacon, `H(previous beacon ‖ VRF output)` (see `beacon`).
    pub beacon: Hash,
    /// Merkle root over the transaction ids, in block order.
    pub tx_root: Hash,
    /// State root after applying this block.
    pub state_root: Hash,
}

impl BlockHeader {
    /// The block id.
    pub fn hash(&self) -> Hash {
        Hash::of_value("pot/block", self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Block {
    pub header: BlockHeader,
    pub txs: Vec<SignedTx>,
}

impl Block {
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }
}

/// The transaction root of a list of transactions.
pub fn tx_root(txs: &[SignedTx]) -> Hash {
    let ids: Vec<Hash> = txs.iter().map(SignedTx::hash).collect();
    tx_root_of_ids(&ids)
}

/// [`tx_root`] from the transactions' ids, for a caller that needs the ids anyway.
pub fn tx_root_of_ids(ids: &[Hash]) -> Hash {
    merkle::root(ids)
}
