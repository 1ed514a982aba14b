//! A training run on disk: `run.json` (which run this is), `checkpoints/NNNNNN.safetensors` and,
//! once it is complete, `manifest.json`. This is what a miner serves to validators.
//! `pot-node verify` reads checkpoints from it, believing each only through its Merkle proof
//! against the claim's on-chain root; the manifest is the miner's note.
//!
//! Every file appears whole or not at all (written aside, synced, renamed), and each checkpoint
//! holds the whole training state, so a run killed at any moment resumes from its last
//! checkpoint and ends with the same checkpoints it would have had.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pot_protocol::{Address, Hash, merkle};
use serde::{Deserialize, Serialize};

use crate::train::run::Progress;

/// The run's record: how it was made and what it committed to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub model: String,
    pub miner: Address,
    pub salt: Hash,
    /// The hyper-parameters the run trained with (one per range the task declares).
    pub hyper: Vec<pot_protocol::task::HyperValue>,
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
    /// The part of `train_seconds` spent taking, hashing and storing checkpoints.
    #[serde(default)]
    pub checkpoint_seconds: f64,
}

fn cpu() -> String {
    "cpu".into()
}

/// Which run a directory holds: a directory is resumed only by the same run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// The hash of the task's on-chain encoding.
    pub task: Hash,
    pub miner: Address,
    pub salt: Hash,
    pub hyper: Vec<pot_protocol::task::HyperValue>,
}

pub struct RunDir {
    pub dir: PathBuf,
}

/// Write `bytes` to `path` atomically and durably: aside, synced, renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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
        write_atomic(&self.checkpoint_path(i), bytes)
    }

    /// Start or resume the run `id` here: `None` for a new run, the progress of an unfinished
    /// one of the same run, and an error for a complete run or another run's directory.
    pub fn begin(&self, id: &RunIdentity) -> anyhow::Result<Option<Progress>> {
        if RunDir::exists(&self.dir) {
            bail!(
                "{} already holds a run; choose another --out",
                self.dir.display()
            );
        }
        let id_path = self.dir.join("run.json");
        match std::fs::read(&id_path) {
            Ok(bytes) => {
                let theirs: RunIdentity = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a run identity", id_path.display()))?;
                if theirs != *id {
                    bail!(
                        "{} holds an unfinished run of another task, miner, salt or \
                         hyper-parameters; choose another --out",
                        self.dir.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.checkpoint_path(0).exists() {
                    bail!(
                        "{} holds checkpoints of an unknown run; choose another --out",
                        self.dir.display()
                    );
                }
                let mut bytes = serde_json::to_vec_pretty(id)?;
                bytes.push(b'\n');
                write_atomic(&id_path, &bytes)?;
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", id_path.display())),
        }
        // The contiguous checkpoints from 0; a later one that is missing ends them.
        let mut hashes = Vec::new();
        let mut last = Vec::new();
        while let Ok(bytes) = std::fs::read(self.checkpoint_path(hashes.len())) {
            hashes.push(Hash::digest(&bytes));
            last = bytes;
        }
        Ok((!hashes.is_empty()).then_some(Progress { hashes, last }))
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
        write_atomic(
            &self.dir.join("manifest.json"),
            (serde_json::to_string_pretty(m)? + "\n").as_bytes(),
        )
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
