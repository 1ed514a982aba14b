//! Which blobs a node may delete. Its store is content-addressed, so what it holds is kept by
//! reachability from the chain: a blob is kept while a task that names it is active or ended
//! less than the retention window ago (its claims' run indexes and their checkpoints, its
//! dataset and eval set files), while this node's own unrevealed runs name it, or while it is
//! younger than a grace period (a download or a publication in progress is not named by
//! anything yet). Everything else goes: without this a miner's and a validator's disks fill with
//! the checkpoints of every task they ever touched.

use std::collections::BTreeSet;

use pot_protocol::state::{Task, TaskStatus};
use pot_protocol::{Hash, Height};

use crate::artifacts::parse_pot_locator;

/// What a task names, as far as retention cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// When it was finalized or failed (`None` while active).
    pub ended_at: Option<Height>,
    /// Its dataset's and eval set's files, and its TorchScript model's.
    pub files: Vec<Hash>,
    /// Its revealed claims' run indexes (`pot://`), each with its committed checkpoint root.
    pub run_indexes: Vec<(Hash, Hash)>,
    /// Checkpoint segments per run (what bounds a run index's size).
    pub segments: u64,
}

impl Named {
    pub fn of(t: &Task) -> Named {
        let ended_at = match &t.status {
            TaskStatus::Active => None,
            TaskStatus::Finalized(o) => Some(o.finalized_at),
            TaskStatus::Failed { at, .. } => Some(*at),
        };
        Named {
            ended_at,
            files: std::iter::once(&t.spec.dataset)
                .chain(t.eval_set.as_ref())
                .flat_map(|d| d.blobs())
                .map(|b| b.sha256)
                .chain(torchscript_hash(&t.spec.model))
                .collect(),
            run_indexes: t
                .claims
                .values()
                .filter_map(|c| c.claim.as_ref())
                .filter_map(|c| Some((parse_pot_locator(&c.artifacts)?, c.checkpoint_root)))
                .collect(),
            segments: t.spec.segments(),
        }
    }
}

/// The file hash of a `torchscript:<locator>#<sha256>` model (stored like a dataset file).
fn torchscript_hash(model: &str) -> Option<Hash> {
    model
        .strip_prefix("torchscript:")?
        .rsplit_once('#')?
        .1
        .parse()
        .ok()
}

/// The blobs that tasks still retained at `height` name. `run_index(index, segments, root)`
/// reads a run index this node holds (its checkpoint hashes, if it is one of `segments`
/// under `root`); one it does not hold names nothing more.
pub fn kept_by_chain(
    tasks: &[Named],
    height: Height,
    retention_blocks: u64,
    run_index: impl Fn(&Hash, u64, &Hash) -> Option<Vec<Hash>>,
) -> BTreeSet<Hash> {
    let mut keep = BTreeSet::new();
    for t in tasks {
        if t.ended_at
            .is_some_and(|at| height > at.saturating_add(retention_blocks))
        {
            continue;
        }
        keep.extend(t.files.iter().copied());
        for (index, root) in &t.run_indexes {
            keep.insert(*index);
            keep.extend(run_index(index, t.segments, root).unwrap_or_default());
        }
    }
    keep
}

/// The blobs of `stored` (each with its age in seconds) that may go: not kept, and older than
/// `grace_seconds`.
pub fn collectable(
    stored: impl IntoIterator<Item = (Hash, f64)>,
    keep: &BTreeSet<Hash>,
    grace_seconds: f64,
) -> Vec<Hash> {
    stored
        .into_iter()
        .filter(|(h, age)| !keep.contains(h) && *age > grace_seconds)
        .map(|(h, _)| h)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Hash {
        Hash([n; 32])
    }

    /// A task with dataset file `n`, whose one claim's run index `n + 1` lists checkpoints
    /// `n + 2` and `n + 3`.
    fn named(n: u8, ended_at: Option<Height>) -> Named {
        Named {
            ended_at,
            files: vec![h(n)],
            run_indexes: vec![(h(n + 1), h(0))],
            segments: 1,
        }
    }

    fn index(i: &Hash, _: u64, _: &Hash) -> Option<Vec<Hash>> {
        Some(vec![h(i.0[0] + 1), h(i.0[0] + 2)])
    }

    #[test]
    fn a_task_keeps_its_files_run_index_and_checkpoints_until_its_retention_window_passes() {
        let tasks = [named(10, None), named(20, Some(100)), named(30, Some(50))];
        let keep = kept_by_chain(&tasks, 150, 50, index);
        let want: BTreeSet<Hash> = [10, 11, 12, 13, 20, 21, 22, 23].map(h).into();
        assert_eq!(
            keep, want,
            "active and just-ended tasks kept, the one ended at 50 not"
        );
        let keep = kept_by_chain(&tasks, 151, 50, index);
        assert!(
            !keep.contains(&h(22)),
            "one block past the window, the checkpoints go"
        );
        assert!(keep.contains(&h(12)), "an active task's stay");
        // A run index this node does not hold keeps only itself.
        let keep = kept_by_chain(&tasks, 0, 50, |_, _, _| None);
        assert!(keep.contains(&h(11)) && !keep.contains(&h(12)));
    }

    #[test]
    fn a_torchscript_model_file_is_named_by_its_hash() {
        let sha = "ab".repeat(32);
        assert_eq!(
            torchscript_hash(&format!("torchscript:https://x/m.pt#{sha}")),
            Some(sha.parse().unwrap())
        );
        assert_eq!(torchscript_hash("mlp:64,32"), None);
    }

    #[test]
    fn only_unnamed_blobs_older_than_the_grace_period_are_collected() {
        let keep: BTreeSet<Hash> = [h(1)].into();
        let stored = [(h(1), 1e6), (h(2), 1e6), (h(3), 10.0)];
        assert_eq!(collectable(stored, &keep, 600.0), vec![h(2)]);
    }
}
