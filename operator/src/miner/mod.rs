//! The `Miner` controller's parts: the fleet's objects (the reconcile and the queue-driven
//! scaling with drain arrive with the rest of the controller).

pub mod children;
