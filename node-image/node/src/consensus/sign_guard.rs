//! What this coordinator's key signed at its highest height, kept in a file of its own and
//! consulted before every signature, so that no restart, restored backup or deleted chain
//! database ever makes the key sign two different messages for one height, round and step —
//! the one act by which an honest coordinator could help fork the chain. The file is written
//! (and synced) before the signature leaves the node, as CometBFT's `priv_validator_state`.

use std::fmt;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pot_protocol::Hash;
use serde::{Deserialize, Serialize};

/// A step of a consensus round at which the key signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Propose,
    Prevote,
    Precommit,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Propose => "proposal",
            Step::Prevote => "prevote",
            Step::Precommit => "precommit",
        })
    }
}

/// One signature: where, and over what (a block hash; zero for a vote for nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    round: u32,
    step: Step,
    value: Hash,
}

/// The file's content: the highest height the key signed at, and every signature there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    height: u64,
    signed: Vec<Signed>,
}

/// Why a signature was refused, or the record could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "refusing to sign a {step} at height {height}: this key already signed at height \
         {signed_height} (recorded in {path}), so the chain database is behind what the key \
         signed; the node must catch up before it signs again"
    )]
    BelowSigned {
        step: Step,
        height: u64,
        signed_height: u64,
        path: PathBuf,
    },
    #[error(
        "refusing to sign a second, different {step} at height {height} round {round}: this key \
         already signed one for {earlier} there (recorded in {path})"
    )]
    Conflict {
        step: Step,
        height: u64,
        round: u32,
        earlier: Hash,
        path: PathBuf,
    },
    #[error(
        "refusing to sign a {step} at height {height} round {round}: this key already signed at \
         round {signed_round} ({signed_step}) there (recorded in {path}); a node that lost its \
         memory of a height must not go back in it"
    )]
    BackInRound {
        step: Step,
        height: u64,
        round: u32,
        signed_round: u32,
        signed_step: Step,
        path: PathBuf,
    },
    #[error(
        "refusing to prevote for {value} at height {height} round {round}: this key precommitted \
         {locked} at round {locked_round} there (recorded in {path}), and the record cannot see \
         the proof that would release that lock"
    )]
    Locked {
        height: u64,
        round: u32,
        value: Hash,
        locked: Hash,
        locked_round: u32,
        path: PathBuf,
    },
    #[error("recording a signature in {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Why the record could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("reading the signing record {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the signing record {path} does not parse ({error}); refusing to guess what this key \
         signed — restore the file, or remove it only if this key has never signed on this chain"
    )]
    Corrupt {
        path: PathBuf,
        error: serde_json::Error,
    },
}

pub struct SignGuard {
    path: PathBuf,
    record: Mutex<Record>,
}

impl SignGuard {
    /// Whether a record exists at `path` (a node refuses to start a fresh one over a chain it
    /// has already followed, unless told to).
    pub fn exists(path: &Path) -> bool {
        path.exists()
    }

    /// Open the record at `path`; a missing file means the key has signed nothing yet.
    pub fn open(path: &Path) -> Result<SignGuard, OpenError> {
        let record = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| OpenError::Corrupt {
                path: path.to_path_buf(),
                error,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(error) => {
                return Err(OpenError::Io {
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        Ok(SignGuard {
            path: path.to_path_buf(),
            record: Mutex::new(record),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest height the key signed at (0: never).
    pub fn height(&self) -> u64 {
        self.record.lock().expect("sign record lock").height
    }

    /// Allow a signature over `value` at (height, round, step), recording it durably first; or
    /// refuse it if the key signed at a higher height, or something else at that place.
    /// Signing the very same thing again (after a restart the engine may) is allowed.
    pub fn permit(&self, height: u64, round: u32, step: Step, value: Hash) -> Result<(), Refusal> {
        let mut record = self.record.lock().expect("sign record lock");
        if height < record.height {
            return Err(Refusal::BelowSigned {
                step,
                height,
                signed_height: record.height,
                path: self.path.clone(),
            });
        }
        let mut next = record.clone();
        if height > next.height {
            next = Record {
                height,
                signed: Vec::new(),
            };
        }
        if let Some(earlier) = next
            .signed
            .iter()
            .find(|s| s.round == round && s.step == step)
        {
            return if earlier.value == value {
                Ok(())
            } else {
                Err(Refusal::Conflict {
                    step,
                    height,
                    round,
                    earlier: earlier.value,
                    path: self.path.clone(),
                })
            };
        }
        // Within a height, never go back to an earlier round or step than one already signed
        // (as CometBFT's signer): an engine that lost its write-ahead log starts the height
        // again at round 0, and its votes there would not be bound by what it did before.
        if let Some(last) = next.signed.iter().max_by_key(|s| (s.round, s.step))
            && (round, step) < (last.round, last.step)
        {
            return Err(Refusal::BackInRound {
                step,
                height,
                round,
                signed_round: last.round,
                signed_step: last.step,
                path: self.path.clone(),
            });
        }
        // Keep the Tendermint lock across a lost write-ahead log: after precommitting a block,
        // prevote for no other block at a later round of the height. An engine that remembers
        // a proof of a later polka could rightly do so; the record cannot see that proof, so
        // such a prevote is withheld (the node is silent for that step, as if crashed), which
        // costs liveness only in that rare case and never safety.
        if step == Step::Prevote
            && value != Hash::ZERO
            && let Some(lock) = next
                .signed
                .iter()
                .filter(|s| s.step == Step::Precommit && s.value != Hash::ZERO && s.round < round)
                .max_by_key(|s| s.round)
            && lock.value != value
        {
            return Err(Refusal::Locked {
                height,
                round,
                value,
                locked: lock.value,
                locked_round: lock.round,
                path: self.path.clone(),
            });
        }
        next.signed.push(Signed { round, step, value });
        write_durably(&self.path, &next).map_err(|error| Refusal::Io {
            path: self.path.clone(),
            error,
        })?;
        *record = next;
        Ok(())
    }
}

/// Write to a temporary file, sync it, rename it over the record and sync the directory, so a
/// crash leaves the old record or the new one.
fn write_durably(path: &Path, record: &Record) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(record).expect("records encode"))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        Hash::digest(s.as_bytes())
    }

    #[test]
    fn the_same_signature_again_is_allowed_and_a_different_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = SignGuard::open(&dir.path().join("signed.json")).unwrap();
        g.permit(5, 0, Step::Propose, h("a")).unwrap();
        g.permit(5, 0, Step::Prevote, h("a")).unwrap();
        g.permit(5, 0, Step::Prevote, h("a")).unwrap();
        assert!(matches!(
            g.permit(5, 0, Step::Prevote, Hash::ZERO),
            Err(Refusal::Conflict {
                height: 5,
                round: 0,
                step: Step::Prevote,
                ..
            })
        ));
        assert!(matches!(
            g.permit(5, 0, Step::Propose, h("b")),
            Err(Refusal::Conflict { .. })
        ));
        // Another round of the same height is another place.
        g.permit(5, 1, Step::Prevote, Hash::ZERO).unwrap();
        // But never an earlier one, nor an earlier step, once a later one is signed.
        assert!(matches!(
            g.permit(5, 0, Step::Precommit, h("a")),
            Err(Refusal::BackInRound {
                signed_round: 1,
                ..
            })
        ));
        g.permit(5, 1, Step::Precommit, Hash::ZERO).unwrap();
        assert!(matches!(
            g.permit(5, 1, Step::Propose, h("c")),
            Err(Refusal::BackInRound { .. })
        ));
        // Signing what was signed before is still fine.
        g.permit(5, 0, Step::Prevote, h("a")).unwrap();
    }

    #[test]
    fn after_precommitting_a_block_the_key_prevotes_for_no_other_at_that_height() {
        let dir = tempfile::tempdir().unwrap();
        let g = SignGuard::open(&dir.path().join("signed.json")).unwrap();
        g.permit(8, 0, Step::Prevote, h("v")).unwrap();
        g.permit(8, 0, Step::Precommit, h("v")).unwrap();
        // The round failed; the engine restarted without its log and is asked for another.
        assert!(matches!(
            g.permit(8, 1, Step::Prevote, h("w")),
            Err(Refusal::Locked {
                locked_round: 0,
                ..
            })
        ));
        // Nil, or the locked block again, is fine.
        g.permit(8, 2, Step::Prevote, h("v")).unwrap();
        g.permit(8, 2, Step::Precommit, Hash::ZERO).unwrap();
        g.permit(8, 3, Step::Prevote, Hash::ZERO).unwrap();
        // A new height has no lock.
        g.permit(9, 0, Step::Prevote, h("w")).unwrap();
    }

    #[test]
    fn the_record_survives_a_restart_and_refuses_lower_heights() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signed.json");
        {
            let g = SignGuard::open(&path).unwrap();
            g.permit(3, 0, Step::Precommit, h("x")).unwrap();
            g.permit(9, 2, Step::Prevote, h("y")).unwrap();
        }
        // A new process, as after a restart with the chain database deleted.
        let g = SignGuard::open(&path).unwrap();
        assert_eq!(g.height(), 9);
        assert!(matches!(
            g.permit(1, 0, Step::Prevote, h("z")),
            Err(Refusal::BelowSigned {
                height: 1,
                signed_height: 9,
                ..
            })
        ));
        assert!(matches!(
            g.permit(9, 2, Step::Prevote, h("other")),
            Err(Refusal::Conflict { .. })
        ));
        g.permit(9, 2, Step::Prevote, h("y")).unwrap();
        g.permit(10, 0, Step::Prevote, h("w")).unwrap();
        assert_eq!(SignGuard::open(&path).unwrap().height(), 10);
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_blank_slate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signed.json");
        fs::write(&path, b"{\"height\": 4, \"sig").unwrap();
        let err = SignGuard::open(&path).err().expect("refused");
        assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("refusing to guess"));
    }

    #[test]
    fn a_failed_write_refuses_the_signature_and_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signed.json");
        let g = SignGuard::open(&path).unwrap();
        // A directory where the temporary file goes: every write fails.
        fs::create_dir(path.with_extension("tmp")).unwrap();
        assert!(matches!(
            g.permit(1, 0, Step::Prevote, h("a")),
            Err(Refusal::Io { .. })
        ));
        assert_eq!(g.height(), 0);
        assert!(!path.exists());
    }
}
