//! Artifacts: the checkpoints, final models, datasets and eval sets that tasks name by SHA-256.
//!
//! A node keeps them content-addressed under its data directory (`store`), serves them to peers
//! and fetches them from peers over libp2p request–response (`wire`, `transfer`, `net`), and
//! serves them to people at `GET /v1/artifacts/{sha256}`. `pot://<sha256>` is the locator of a
//! blob that is fetched by hash from the network. Nothing fetched is used or stored before it is
//! checked: each chunk against the holder's chunk list, the whole blob against its hash.

pub mod net;
pub mod store;
pub mod transfer;
pub mod wire;

pub use store::BlobStore;

use pot_protocol::Hash;

/// The locator of a blob fetched by hash from the network.
pub fn pot_locator(blob: &Hash) -> String {
    format!("pot://{blob}")
}
