//! `pot-node`: the PoT node. For now it manages keys and writes genesis files; training,
//! verification, consensus, networking and the HTTP API arrive as their own modules.

pub mod genesis_builder;
pub mod keyfile;
pub mod train;
