//! `pot-operator`: reconciles `PotNetwork`, `Miner` and `TrainingTask` resources into the
//! workloads of a PoT network.

pub mod apply;
pub mod autoscale;
pub mod backoff;
pub mod conditions;
pub mod context;
pub mod crd;
pub mod error;
pub mod key_secret;
pub mod leadership;
pub mod metrics;
pub mod miner;
pub mod network;
pub mod queue;
pub mod run;
pub mod task;
