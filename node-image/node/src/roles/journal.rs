//! A role's own durable records (the miner's jobs, the validator's reports): what it must not
//! forget across a restart because the chain cannot tell it — a salt before its reveal, a
//! report before it is revealed. One JSON file per kind of record, replaced atomically, so a
//! crash leaves the old file or the new one, never half of either.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct Journal<K, V> {
    path: PathBuf,
    pub entries: BTreeMap<K, V>,
}

impl<K, V> Journal<K, V>
where
    K: Ord + Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// Read the journal at `path` (empty if it does not exist yet). A file that does not parse
    /// is an error that names it: guessing would lose a salt.
    pub fn open(path: &Path) -> anyhow::Result<Journal<K, V>> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => {
                let list: Vec<(K, V)> = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is not a journal this node wrote; move it aside to start afresh \
                         (what it records is then lost)",
                        path.display()
                    )
                })?;
                list.into_iter().collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Journal {
            path: path.to_owned(),
            entries,
        })
    }

    /// Write every entry out, durably, before the caller acts on them.
    pub fn save(&self) -> anyhow::Result<()> {
        let list: Vec<(&K, &V)> = self.entries.iter().collect();
        crate::run_dir::write_atomic(&self.path, &serde_json::to_vec_pretty(&list)?)
    }

    /// Set `key` to `value` and save.
    pub fn put(&mut self, key: K, value: V) -> anyhow::Result<()> {
        self.entries.insert(key, value);
        self.save()
    }

    /// Keep only the entries `keep` accepts, and save if any went.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) -> anyhow::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|k, _| keep(k));
        if self.entries.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Remove `key` and save.
    pub fn remove(&mut self, key: &K) -> anyhow::Result<()> {
        if self.entries.remove(key).is_some() {
            self.save()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_a_corrupt_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.json");
        let mut j: Journal<String, u32> = Journal::open(&path).unwrap();
        assert!(j.entries.is_empty());
        j.put("a".into(), 1).unwrap();
        j.put("b".into(), 2).unwrap();
        j.remove(&"a".to_string()).unwrap();
        j.put("c".into(), 3).unwrap();
        j.retain(|k| k != "c").unwrap();
        let again: Journal<String, u32> = Journal::open(&path).unwrap();
        assert_eq!(
            again.entries.into_iter().collect::<Vec<_>>(),
            [("b".into(), 2)]
        );

        std::fs::write(&path, b"{not json").unwrap();
        let err = Journal::<String, u32>::open(&path).err().unwrap();
        assert!(format!("{err:#}").contains("jobs.json"), "{err:#}");
    }
}
