//! `pot-operator`: reconciles `PotNetwork`, `Miner` and `TrainingTask` resources. The CRD types
//! and controllers arrive with their issue; what is here is the scaling rule they will use.

pub mod autoscale;
