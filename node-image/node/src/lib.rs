//! `pot-node`: the PoT node. Keys and genesis files, training with libtorch and verification
//! of runs; the coordinator: BFT consensus (Malachite), the ledger and its store, the HTTP API.

pub mod api;
pub mod artifacts;
pub mod bench;
pub mod chain;
pub mod commands;
pub mod consensus;
pub mod coordinator;
pub mod devnet;
pub mod genesis_builder;
pub mod keyfile;
pub mod metrics;
pub mod p2p;
pub mod roles;
pub mod run_dir;
pub mod train;
pub mod verify;
pub mod wallet;
