//! `pot-node`: the PoT node. Keys and genesis files, training with libtorch and verification
//! of runs; consensus, networking and the HTTP API arrive as their own modules.

pub mod bench;
pub mod commands;
pub mod genesis_builder;
pub mod keyfile;
pub mod run_dir;
pub mod train;
pub mod verify;
