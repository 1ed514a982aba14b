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

/// The blob a `pot://<sha256>` locator names.
pub fn parse_pot_locator(locator: &str) -> Option<Hash> {
    locator.strip_prefix("pot://")?.parse().ok()
}

/// The peer id of the node whose account is `address`: every node's swarm identity is its
/// account key, so a claim's miner is also the peer that serves its checkpoints.
pub fn peer_of(address: &pot_protocol::Address) -> Option<libp2p::PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(&address.0).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// What a claim's `artifacts` locator names: the hashes of its checkpoints, `W_0` first, each a
/// blob. It is believed only as far as its Merkle root is the one the claim committed to.
#[derive(Clone, Debug, PartialEq, Eq, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub struct RunIndex {
    pub checkpoints: Vec<Hash>,
}

impl RunIndex {
    /// The size of the index of a run with `segments` segments.
    pub fn bytes_for(segments: u64) -> u64 {
        4 + 32 * (segments + 1)
    }

    pub fn encode(&self) -> Vec<u8> {
        pot_protocol::encoding::encode(self)
    }

    /// Decode an index and check it against the claim: `segments + 1` checkpoints whose Merkle
    /// root is `root`.
    pub fn decode(bytes: &[u8], segments: u64, root: &Hash) -> anyhow::Result<RunIndex> {
        let max = Self::bytes_for(segments) as usize;
        let index: RunIndex = pot_protocol::encoding::decode_limited(bytes, max)
            .map_err(|e| anyhow::anyhow!("the run index does not decode: {e}"))?;
        anyhow::ensure!(
            index.checkpoints.len() as u64 == segments + 1,
            "the run index lists {} checkpoints; the claim has {}",
            index.checkpoints.len(),
            segments + 1
        );
        let actual = pot_protocol::merkle::root(&index.checkpoints);
        anyhow::ensure!(
            actual == *root,
            "the run index's Merkle root is {actual}, the claim committed to {root}"
        );
        Ok(index)
    }
}
