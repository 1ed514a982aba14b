//! The `TrainingTask` controller's parts: the spec in the ledger's terms (the submission,
//! status mirroring and the eval-set reveal arrive with the rest of the controller).

pub mod spec;
