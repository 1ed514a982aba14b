//! The client's side of a task: local datasets published by hash (`pot://`), so a client needs
//! no web server, and the eval set revealed when its window opens. `pot-node task submit
//! --publish-to DIR` puts the files into `DIR/artifacts` and the eval secret into
//! `DIR/eval-secrets/`; `pot-node run --role client --data-dir DIR` serves them and reveals.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use pot_protocol::state::Task;
use pot_protocol::task::DatasetRef;
use pot_protocol::{Address, Hash, Height, Phase};

use crate::artifacts::{BlobStore, pot_locator};
use crate::train::task::TaskFile;
use crate::wallet::EvalSecret;

/// The directory of eval secrets under a client's data directory.
pub fn secrets_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("eval-secrets")
}

/// Where a client keeps its published eval set files until they are revealed: a store of the
/// same layout as its artifacts, but neither announced nor served (miners must not see the
/// eval set before their claims are in).
pub fn held_store(data_dir: &Path) -> BlobStore {
    BlobStore::at(data_dir.join("eval-held"))
}

/// The local file a locator names (`file://PATH` or a bare path), if it names one.
fn local_path(locator: &str) -> Option<PathBuf> {
    if let Some(p) = locator.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    (!locator.contains("://") && !locator.starts_with("builtin:")).then(|| PathBuf::from(locator))
}

/// Put `path` into the store and return its `pot://` locator; its hash must be the one the
/// task declares.
fn publish_file(store: &BlobStore, path: &Path, declared: &Hash) -> anyhow::Result<String> {
    let hash = store
        .put_file(path)
        .with_context(|| format!("publishing {}", path.display()))?;
    anyhow::ensure!(
        hash == *declared,
        "{} has SHA-256 {hash}, but the task declares {declared}",
        path.display()
    );
    Ok(pot_locator(&hash))
}

fn publish_dataset(store: &BlobStore, d: &mut DatasetRef) -> anyhow::Result<Vec<Hash>> {
    let mut published = Vec::new();
    if let Some(p) = local_path(&d.locator) {
        d.locator = publish_file(store, &p, &d.sha256)?;
        published.push(d.sha256);
    }
    if let Some(labels) = &mut d.labels
        && let Some(p) = local_path(&labels.locator)
    {
        labels.locator = publish_file(store, &p, &labels.sha256)?;
        published.push(labels.sha256);
    }
    Ok(published)
}

/// Publish the task's local dataset files into `store` (served at once) and its eval set files
/// into `held` (served only once revealed), rewriting their locators to `pot://<sha256>`;
/// returns the blobs published.
pub fn publish_local(
    file: &mut TaskFile,
    store: &BlobStore,
    held: &BlobStore,
) -> anyhow::Result<Vec<Hash>> {
    let mut published = publish_dataset(store, &mut file.spec.dataset).context("the dataset")?;
    if let Some(eval) = &mut file.eval_set {
        published.extend(publish_dataset(held, eval).context("the eval set")?);
    }
    Ok(published)
}

/// Move a revealed eval set's held files into the served store; returns the blobs to announce.
pub fn release_eval_set(
    eval_set: &DatasetRef,
    held: &BlobStore,
    store: &BlobStore,
) -> anyhow::Result<Vec<Hash>> {
    let mut released = Vec::new();
    for b in eval_set.blobs() {
        if crate::artifacts::parse_pot_locator(&b.locator).is_some() && held.contains(&b.sha256) {
            store.put_file(&held.path(&b.sha256))?;
            released.push(b.sha256);
        }
    }
    Ok(released)
}

/// The eval secrets kept in `dir` (each `<task id>.json`); a file that does not parse is
/// skipped with a warning (it names itself), never deleted.
pub fn read_secrets(dir: &Path) -> Vec<EvalSecret> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<EvalSecret>(&b)?))
        {
            Ok(s) => out.push(s),
            Err(e) => tracing::warn!(file = %path.display(), "not an eval secret: {e:#}"),
        }
    }
    out
}

/// Whether the eval set of `t` (a task of client `me`) is to be revealed now: its window is
/// open at the next height and it is not revealed yet.
pub fn due(t: &Task, me: &Address, height: Height) -> bool {
    t.client == *me && t.eval_set.is_none() && t.phase(height + 1) == Phase::EvalReveal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eval set is not served before its reveal: miners would train on it.
    #[test]
    fn the_eval_set_is_held_back_until_it_is_revealed() {
        let dir = tempfile::tempdir().unwrap();
        let eval = dir.path().join("eval.csv");
        std::fs::write(&eval, b"1,2,0\n").unwrap();
        let sha = Hash::digest(b"1,2,0\n");
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tasks/digits-mlp.yaml"
        ))
        .unwrap();
        let (head, rest) = example.split_once("eval_set:").unwrap();
        let (_, tail) = rest.split_once("# Phase lengths").unwrap();
        let text = format!(
            "{head}eval_set:\n  locator: {}\n  sha256: {sha}\n# Phase lengths{tail}",
            eval.display()
        );
        let mut file = TaskFile::parse(&text).unwrap();
        let store = BlobStore::open(&dir.path().join("artifacts")).unwrap();
        let held = held_store(dir.path());
        assert_eq!(publish_local(&mut file, &store, &held).unwrap(), [sha]);
        assert!(
            !store.contains(&sha),
            "the eval set is served before its reveal"
        );
        assert!(held.contains(&sha));
        let revealed = file.eval_set.unwrap();
        assert_eq!(revealed.locator, pot_locator(&sha));
        assert_eq!(release_eval_set(&revealed, &held, &store).unwrap(), [sha]);
        assert!(store.contains(&sha));
    }

    #[test]
    fn a_local_dataset_is_published_by_hash_and_a_wrong_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join("artifacts")).unwrap();
        let data = dir.path().join("eval.csv");
        std::fs::write(&data, b"1,2,0\n3,4,1\n").unwrap();
        let sha = Hash::digest(b"1,2,0\n3,4,1\n");
        let mut d = DatasetRef {
            locator: format!("file://{}", data.display()),
            sha256: sha,
            format: Default::default(),
            labels: None,
            feature_divisor: 1,
            image: None,
        };
        assert_eq!(publish_dataset(&store, &mut d).unwrap(), [sha]);
        assert_eq!(d.locator, pot_locator(&sha));
        assert!(store.contains(&sha));
        // Already published: nothing to do.
        assert!(publish_dataset(&store, &mut d).unwrap().is_empty());

        let mut wrong = DatasetRef {
            locator: data.display().to_string(),
            sha256: Hash::digest(b"something else"),
            ..d.clone()
        };
        let err = publish_dataset(&store, &mut wrong).unwrap_err();
        assert!(format!("{err:#}").contains("eval.csv"), "{err:#}");
        // Built-in and remote datasets stay as they are.
        let mut builtin = DatasetRef {
            locator: "builtin:digits".into(),
            ..d
        };
        assert!(publish_dataset(&store, &mut builtin).unwrap().is_empty());
    }
}
