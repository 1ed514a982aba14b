//! Training with libtorch (through `tch`): the "useful work" of Proof of Training, recorded so
//! that anyone can check it. Models and data, an optimizer whose state is explicit (so it is
//! part of every checkpoint), canonical checkpoint bytes, and runs that can be replayed from any
//! checkpoint.

pub mod allocator;
pub mod checkpoint;
pub mod data;
pub mod datasets;
pub mod determinism;
pub mod fetch;
pub mod model;
pub mod optim;
pub mod run;
pub mod task;

pub use run::{RunRecord, RunSpec, Trainer};
