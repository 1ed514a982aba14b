//! Where a validator reads a claim's checkpoints from. A source is the miner's side of the
//! exchange: nothing it returns is believed. The verifier checks every checkpoint's Merkle proof
//! against the root the chain holds, and that the proof is for the index it asked for.

use pot_protocol::merkle::{self, Proof};

use crate::run_dir::RunDir;
use crate::train::checkpoint;

/// Checkpoints of one run, by index (`0` is `W_0`).
pub trait CheckpointSource {
    /// Checkpoint `i`'s bytes and a Merkle proof that they are leaf `i` of the run's tree; a
    /// checkpoint larger than `max_bytes` is not read (an error).
    fn fetch(&self, i: usize, max_bytes: u64) -> anyhow::Result<(Vec<u8>, Proof)>;
}

/// Checkpoints held in memory (a trajectory built by a test or a benchmark), served with
/// proofs from their own hashes.
pub struct MemorySource {
    checkpoints: Vec<Vec<u8>>,
    hashes: Vec<pot_protocol::Hash>,
}

impl MemorySource {
    pub fn new(checkpoints: Vec<Vec<u8>>) -> MemorySource {
        let hashes = checkpoints.iter().map(|c| checkpoint::hash(c)).collect();
        MemorySource {
            checkpoints,
            hashes,
        }
    }

    /// Each checkpoint's hash, `W_0` first.
    pub fn hashes(&self) -> &[pot_protocol::Hash] {
        &self.hashes
    }
}

impl CheckpointSource for MemorySource {
    fn fetch(&self, i: usize, _max_bytes: u64) -> anyhow::Result<(Vec<u8>, Proof)> {
        let bytes = self
            .checkpoints
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("no checkpoint {i}"))?;
        let proof = merkle::prove(&self.hashes, i).expect("index checked above");
        Ok((bytes.clone(), proof))
    }
}

/// A run directory as a miner wrote it. Its manifest's list of checkpoint hashes is used only
/// to build proofs, which the verifier then checks against the on-chain root: a manifest that
/// lies gives proofs that fail.
pub struct RunDirSource {
    run: RunDir,
    leaves: Vec<pot_protocol::Hash>,
}

impl RunDirSource {
    pub fn open(run: RunDir) -> anyhow::Result<RunDirSource> {
        let leaves = run.read_manifest()?.checkpoints;
        Ok(RunDirSource { run, leaves })
    }
}

impl CheckpointSource for RunDirSource {
    fn fetch(&self, i: usize, max_bytes: u64) -> anyhow::Result<(Vec<u8>, Proof)> {
        use std::io::Read as _;
        let path = self.run.checkpoint_path(i);
        let read = |e: std::io::Error| anyhow::anyhow!("reading {}: {e}", path.display());
        // One byte over the limit is enough to know it is too large.
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .map_err(read)?
            .take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        anyhow::ensure!(
            bytes.len() as u64 <= max_bytes,
            "{} is larger than any checkpoint of this model ({max_bytes} bytes)",
            path.display()
        );
        let proof = merkle::prove(&self.leaves, i).ok_or_else(|| {
            anyhow::anyhow!(
                "the run directory lists {} checkpoints, not {}",
                self.leaves.len(),
                i + 1
            )
        })?;
        Ok((bytes, proof))
    }
}

/// A claim's checkpoints fetched by hash from the artifact network into this node's blob store
/// (a fetch cut short resumes from the chunks already stored). `leaves` come from the claim's
/// run index, whose root the caller checked against the chain; each blob is checked against
/// its hash as it arrives. Called from a blocking thread: each fetch waits on the runtime.
pub struct NetworkSource {
    pub net: crate::artifacts::net::ArtifactNet,
    pub runtime: tokio::runtime::Handle,
    pub leaves: Vec<pot_protocol::Hash>,
    /// Peers asked first (the miner); the network's provider records add more.
    pub holders: Vec<libp2p::PeerId>,
    /// How long one checkpoint may take.
    pub timeout: std::time::Duration,
    /// Checkpoints whose download was started ahead of being asked for.
    pub started: std::sync::Mutex<std::collections::BTreeSet<usize>>,
}

/// Checkpoints fetched ahead of the one asked for: a verification reads them in order, and
/// without this it waits one round trip per checkpoint (the artifact network bounds how many
/// downloads run at once).
const FETCH_AHEAD: usize = 8;

impl NetworkSource {
    /// Start downloading the checkpoints after `i` (with the size limit `i` was asked with),
    /// so that they are in the store when asked for.
    fn fetch_ahead(&self, i: usize, max_bytes: u64) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        for j in i + 1..(i + 1 + FETCH_AHEAD).min(self.leaves.len()) {
            let blob = self.leaves[j];
            if self.net.store.contains(&blob) || !started.insert(j) {
                continue;
            }
            let (net, holders, timeout) = (self.net.clone(), self.holders.clone(), self.timeout);
            // A failure here is seen again when the checkpoint is asked for.
            self.runtime.spawn(async move {
                let _ = tokio::time::timeout(timeout, net.fetch(blob, max_bytes, &holders)).await;
            });
        }
    }
}

impl CheckpointSource for NetworkSource {
    fn fetch(&self, i: usize, max_bytes: u64) -> anyhow::Result<(Vec<u8>, Proof)> {
        let blob = *self
            .leaves
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("the run index has no checkpoint {i}"))?;
        self.fetch_ahead(i, max_bytes);
        let fetch = self.net.fetch(blob, max_bytes, &self.holders);
        self.runtime
            .block_on(async { tokio::time::timeout(self.timeout, fetch).await })
            .map_err(|_| {
                anyhow::anyhow!("checkpoint {i} ({blob}) took over {:?}", self.timeout)
            })??;
        let bytes = self.net.store.read(&blob)?;
        anyhow::ensure!(
            bytes.len() as u64 <= max_bytes,
            "checkpoint {i} is larger than any checkpoint of this model ({max_bytes} bytes)"
        );
        let proof = merkle::prove(&self.leaves, i).expect("index checked above");
        Ok((bytes, proof))
    }
}
