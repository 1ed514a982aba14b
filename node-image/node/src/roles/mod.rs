//! The network roles besides the coordinator. What a miner and a validator decide are pure
//! functions of the chain and of their own records (`miner`, `validator`), tested without a
//! network; `node` is the loop that acts on them, `status` what the node shows, `journal` what
//! it must not forget across a restart.

pub mod challenge;
#[cfg(feature = "fault-injection")]
pub mod cheats;
pub mod client;
pub mod journal;
pub mod miner;
pub mod node;
pub mod retention;
pub mod status;
pub mod validator;
