//! `pot-protocol`: the Proof-of-Training ledger.
//!
//! Types (keys, hashes, transactions, blocks), the canonical encoding, the genesis file, the
//! Merkle tree over checkpoints, the VRF beacon and sampling from it, and the ledger state machine — a pure,
//! deterministic function from a state and a block to the next state; the JSON types of a node's
//! HTTP API and a typed client for it. Nothing but `client` does I/O.

pub mod api;
pub mod beacon;
pub mod block;
pub mod client;
pub mod commit;
pub mod crypto;
pub mod encoding;
pub mod error;
pub mod genesis;
pub mod hash;
pub mod keyfile;
pub mod ledger;
pub mod merkle;
pub mod merkle_map;
pub mod sampling;
pub mod state;
pub mod task;
pub mod tx;
pub mod units;

pub use block::{Block, BlockHeader};
pub use crypto::{Address, SecretKey, Signature};
pub use error::{BlockError, TxError};
pub use genesis::{Genesis, Params};
pub use hash::Hash;
pub use ledger::{
    BuiltBlock, ProposerKey, TxCtx, VerifiedTx, apply_block, apply_block_known, apply_tx,
    apply_verified_tx, begin_block, build_block, build_block_verified,
};
pub use state::{Phase, State};
pub use task::TaskSpec;
pub use tx::{SignedTx, Tx, TxBody};
pub use units::{Amount, Fixed, Height, Ppm};
