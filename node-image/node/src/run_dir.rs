//! A training run on disk: `checkpoints/NNNNNN.safetensors` and `manifest.json`. This is what a
//! miner serves to validators. `pot-node verify` reads checkpoints from it, believing each only
//! through its Merkle proof against the claim's on-chain root; the manifest is the miner's note.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pot_protocol::{Address, Hash, merkle};
use serde::{Deserialize, Serialize};

/// The run's record: how it was made and what it committed to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub model: String,
    pub miner: Address,
    pub salt: Hash,
    pub run_seed: Hash,
    pub steps: u64,
    pub checkpoint_interval: u64,
    /// SHA-256 of each checkpoint, `W_0` first.
    pub checkpoints: Vec<Hash>,
    pub merkle_root: Hash,
    /// The claimed model: the hash of the last checkpoint.
    pub model_hash: Hash,
    pub final_loss: f32,
    pub held_out_accuracy: f64,
    /// What makes a CPU replay bit-identical: libtorch's version, its kernel level and threads.
    pub libtorch: String,
    pub cpu_capability: String,
    pub threads: i32,
    /// Where it trained (`cpu`, `cuda:0`); runs made before this was recorded were on the CPU.
    #[serde(default = "cpu")]
    pub device: String,
    pub train_seconds: f64,
}

fn cpu() -> String {
    "cpu".into()
}

pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn new(dir: impl Into<PathBuf>) -> RunDir {
        RunDir { dir: dir.into() }
    }

    pub fn checkpoint_path(&self, i: usize) -> PathBuf {
        self.dir
            .join("checkpoints")
            .join(format!("{i:06}.safetensors"))
    }

    pub fn write_checkpoint(&self, i: usize, bytes: &[u8]) -> anyhow::Result<()> {
        let p = self.checkpoint_path(i);
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    }

    /// Checkpoint `i`, checked against the manifest's hash for it and the Merkle root.
    pub fn read_checkpoint(&self, m: &Manifest, i: usize) -> anyhow::Result<Vec<u8>> {
        let p = self.checkpoint_path(i);
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let h = Hash::digest(&bytes);
        let Some(expected) = m.checkpoints.get(i) else {
            bail!(
                "the run has {} checkpoints, not {}",
                m.checkpoints.len(),
                i + 1
            );
        };
        if h != *expected {
            bail!(
                "{}: SHA-256 {h} is not the committed {expected}",
                p.display()
            );
        }
        let proof = merkle::prove(&m.checkpoints, i).expect("index checked above");
        if !proof.verify(&m.merkle_root, &h) {
            bail!(
                "checkpoint {i} is not under the Merkle root {}",
                m.merkle_root
            );
        }
        Ok(bytes)
    }

    pub fn write_manifest(&self, m: &Manifest) -> anyhow::Result<()> {
        let p = self.dir.join("manifest.json");
        std::fs::write(&p, serde_json::to_string_pretty(m)? + "\n")
            .with_context(|| format!("writing {}", p.display()))
    }

    /// The manifest, with its Merkle root checked against its checkpoint list.
    pub fn read_manifest(&self) -> anyhow::Result<Manifest> {
        let p = self.dir.join("manifest.json");
        let m: Manifest = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a run manifest", p.display()))?;
        if merkle::root(&m.checkpoints) != m.merkle_root {
            bail!(
                "{}: the Merkle root does not match the checkpoint list",
                p.display()
            );
        }
        Ok(m)
    }

    pub fn exists(path: &Path) -> bool {
        path.join("manifest.json").exists()
    }
}
