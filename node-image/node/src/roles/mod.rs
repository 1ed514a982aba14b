//! The network roles besides the coordinator: what a miner (and, to come, a validator, a
//! verifier and a client) decides, as pure functions of the chain and its own disk, tested
//! without a network; the loops that act on them are at the edge.

pub mod miner;
