//! A task file (the one format of `pot_protocol::task`, plus what a client adds to submit it),
//! and what the trainer and verifier need from a task: the run, the data, the tolerance.

use std::path::Path;

use anyhow::{Context, bail};
use pot_protocol::task::{DataFormat, DatasetRef, HyperValue, LossKind, Optimizer, TaskSpec};
use pot_protocol::tx::Windows;
use pot_protocol::{Address, Amount, Fixed, Hash};
use serde::de::DeserializeOwned;

use super::data::Dataset;
use super::datasets;
use super::fetch::{Cache, fetch};
use super::model::ModelSpec;
use super::optim::{OptimizerConfig, OptimizerKind};
use super::run::{Loss, RunSpec};

/// AdamW's ε: fixed, since six decimal places cannot write 1e-8.
const ADAMW_EPS: f64 = 1e-8;

/// A task file: the task itself, and for `pot-node task submit` the bounty, the eval set the
/// client commits to now and reveals later, and the phase windows. `pot-node train` reads the
/// same file and ignores the submission fields.
#[derive(Clone, Debug)]
pub struct TaskFile {
    pub spec: TaskSpec,
    pub bounty: Option<Amount>,
    pub eval_set: Option<DatasetRef>,
    pub windows: Option<Windows>,
}

/// Take submission field `key` out of the document, read as a `T`.
fn take<T: DeserializeOwned>(
    doc: &mut serde_yaml::Mapping,
    key: &str,
) -> anyhow::Result<Option<T>> {
    doc.remove(key)
        .map(|v| serde_yaml::from_value(v).with_context(|| format!("`{key}`")))
        .transpose()
}

impl TaskFile {
    pub fn read(path: &Path) -> anyhow::Result<TaskFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        TaskFile::parse(&text).with_context(|| format!("task file {}", path.display()))
    }

    /// Parse and check a task file: the task's fields as the chain will check them, and the
    /// model descriptor as this node understands it.
    pub fn parse(text: &str) -> anyhow::Result<TaskFile> {
        let mut doc: serde_yaml::Mapping = serde_yaml::from_str(text)?;
        let bounty = take(&mut doc, "bounty")?;
        let eval_set = take(&mut doc, "eval_set")?;
        let windows = take(&mut doc, "windows")?;
        let spec: TaskSpec = serde_yaml::from_value(doc.into())?;
        check_model(&spec)?;
        Ok(TaskFile {
            spec,
            bounty,
            eval_set,
            windows,
        })
    }

    /// What `SubmitTask` needs besides the spec; an error names what the file lacks.
    pub fn submission(&self) -> anyhow::Result<(Amount, DatasetRef, Windows)> {
        let missing = |what: &str| {
            anyhow::anyhow!(
                "a task to submit needs `{what}` (the file has the task but not the submission \
                 fields bounty, eval_set, windows)"
            )
        };
        Ok((
            self.bounty.ok_or_else(|| missing("bounty"))?,
            self.eval_set.clone().ok_or_else(|| missing("eval_set"))?,
            self.windows.ok_or_else(|| missing("windows"))?,
        ))
    }
}

/// The model descriptor must be one this node can build (a TorchScript model is checked when
/// it is fetched).
pub fn check_model(spec: &TaskSpec) -> anyhow::Result<()> {
    if !spec.model.starts_with("torchscript:") {
        spec.model.parse::<ModelSpec>()?;
    }
    Ok(())
}

/// The hyper-parameters of a run: the task's defaults, with `overrides` (`name=value`) in
/// their place, checked against the task's ranges.
pub fn choose_hyper(spec: &TaskSpec, overrides: &[String]) -> anyhow::Result<Vec<HyperValue>> {
    let mut chosen = spec.default_hyper();
    for o in overrides {
        let Some((name, value)) = o.split_once('=') else {
            bail!("--hyper {o:?}: expected NAME=VALUE");
        };
        let value: Fixed = value
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("--hyper {o:?}: {e}"))?;
        let Some(slot) = chosen.iter_mut().find(|v| v.name == name.trim()) else {
            bail!(
                "--hyper {o:?}: the task declares no hyper-parameter {name:?} (it declares {:?})",
                spec.hyper.iter().map(|r| &r.name).collect::<Vec<_>>()
            );
        };
        slot.value = value;
    }
    spec.check_hyper(&chosen).map_err(anyhow::Error::msg)?;
    Ok(chosen)
}

/// How far each tensor of a replay may be from the committed checkpoint.
pub fn tolerance(spec: &TaskSpec) -> crate::verify::Tolerance {
    let v = &spec.verification;
    crate::verify::Tolerance {
        parameters: v.replay_tolerance.to_f64(),
        optimizer: v.optimizer_tolerance.to_f64(),
    }
}

/// The intra-op thread count to train or replay with, given the one asked for: a task that
/// demands bit-identical replays fixes it (asking for another is refused, since its checkpoints
/// would not replay); a task with a tolerance takes what is asked, or 1.
pub fn threads(spec: &TaskSpec, asked: Option<i32>) -> anyhow::Result<i32> {
    let exact = spec.verification.is_exact();
    let fixed = spec.verification.cpu_threads as i32;
    match asked {
        Some(n) if n < 1 => bail!("--threads must be at least 1"),
        Some(n) if exact && n != fixed => bail!(
            "this task demands bit-identical replays with cpu_threads: {fixed}; training or \
             replaying with {n} threads would sum in another order"
        ),
        Some(n) => Ok(n),
        None if exact => Ok(fixed),
        None => Ok(1),
    }
}

/// The run of `miner` with `salt` and hyper-parameters `hyper`, training on `device`
/// (fetching a TorchScript model through `cache`).
pub fn run_spec(
    spec: &TaskSpec,
    hyper: &[HyperValue],
    miner: &Address,
    salt: &Hash,
    device: tch::Device,
    cache: &Cache,
) -> anyhow::Result<RunSpec> {
    spec.check_hyper(hyper).map_err(anyhow::Error::msg)?;
    let h = |name: &str| {
        spec.hyper_value(hyper, name)
            .map(Fixed::to_f64)
            .with_context(|| format!("the task gives no {name}"))
    };
    let kind = match spec.optimizer {
        Optimizer::Sgd => OptimizerKind::Sgd {
            momentum: h("momentum")?,
        },
        Optimizer::AdamW => OptimizerKind::AdamW {
            beta1: h("beta1")?,
            beta2: h("beta2")?,
            eps: ADAMW_EPS,
        },
    };
    Ok(RunSpec {
        loss: match spec.loss {
            LossKind::CrossEntropy => Loss::CrossEntropy,
            LossKind::Mse => Loss::Mse,
        },
        model: ModelSpec::resolve(&spec.model, cache)?,
        optimizer: OptimizerConfig {
            kind,
            lr: h("lr")?,
            weight_decay: h("weight_decay")?,
        },
        batch_size: i64::from(spec.batch_size),
        steps: spec.steps,
        checkpoint_interval: spec.checkpoint_interval,
        run_seed: pot_protocol::tx::run_seed(spec.seed, miner, salt),
        device,
    })
}

/// The task's dataset, fetched and checked, split into `(train, held_out)`.
pub fn load_data(spec: &TaskSpec, cache: &Cache) -> anyhow::Result<(Dataset, Dataset)> {
    let data = load_dataset(&spec.dataset, cache).context("the task's dataset")?;
    Ok(datasets::split(&data, spec.holdout_per_mille, spec.seed))
}

/// A dataset (the training set or an eval set), fetched, checked against its hash and read.
pub fn load_dataset(d: &DatasetRef, cache: &Cache) -> anyhow::Result<Dataset> {
    let bytes = fetch(&d.locator, &d.sha256, cache)?;
    let builtin = d
        .locator
        .strip_prefix("builtin:")
        .and_then(datasets::builtin);
    let mut data = if let Some(b) = builtin {
        b.load()
    } else {
        let mut data = match d.format {
            DataFormat::Csv => datasets::from_csv(&bytes)?,
            DataFormat::Safetensors => datasets::from_safetensors(&bytes)?,
            DataFormat::Idx => {
                let Some(labels) = &d.labels else {
                    bail!("dataset format idx needs `labels: {{locator, sha256}}`");
                };
                let label_bytes = fetch(&labels.locator, &labels.sha256, cache)?;
                datasets::from_idx(&bytes, &label_bytes)?
            }
        };
        if d.feature_divisor != 1 {
            data.x /= f64::from(d.feature_divisor);
        }
        data
    };
    if let Some(image) = d.image {
        let image = image.map(i64::from);
        if image.iter().product::<i64>() != data.features() {
            bail!(
                "dataset image shape {image:?} does not match its {} features",
                data.features()
            );
        }
        data.image = Some(image);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = "
model: mlp:16
dataset: {locator: 'builtin:digits', sha256: 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22}
optimizer: {kind: sgd, lr: {min: 0.01, max: 0.1, default: 0.05}, momentum: 0.9}
batch_size: 32
steps: 100
checkpoint_interval: 10
seed: 7
";

    #[test]
    fn a_training_file_has_no_submission_and_says_what_is_missing() {
        let f = TaskFile::parse(TASK).unwrap();
        assert_eq!(f.spec.steps, 100);
        let err = f.submission().unwrap_err().to_string();
        assert!(err.contains("needs `bounty`"), "{err}");
    }

    #[test]
    fn a_submission_file_is_the_same_task_plus_three_fields() {
        let text = format!(
            "{TASK}bounty: 5000\neval_set: {{locator: 'builtin:digits', sha256: {}}}\n\
             windows: {{commit: 20, reveal: 10, eval_reveal: 10, report_commit: 20, \
             report_reveal: 10, challenge: 10, challenge_reveal: 5, vote: 10, vote_reveal: 5}}\n",
            Hash::ZERO
        );
        let f = TaskFile::parse(&text).unwrap();
        assert_eq!(f.spec, TaskFile::parse(TASK).unwrap().spec);
        let (bounty, eval, windows) = f.submission().unwrap();
        assert_eq!(
            (bounty, eval.sha256, windows.commit),
            (Amount(5000), Hash::ZERO, 20)
        );
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem() {
        let says = |text: &str, what: &str| {
            let err = format!("{:#}", TaskFile::parse(text).unwrap_err());
            assert!(err.contains(what), "{what}: {err}");
        };
        says(&TASK.replace("mlp:16", "transformer"), "transformer");
        says(&format!("{TASK}colour: blue\n"), "unknown field `colour`");
        says(&format!("{TASK}bounty: lots\n"), "bounty");
        says(
            &TASK.replace("batch_size: 32", "batch_size: 0"),
            "batch_size",
        );
    }

    #[test]
    fn hyper_parameters_are_chosen_within_the_ranges() {
        let spec = TaskFile::parse(TASK).unwrap().spec;
        let chosen = choose_hyper(&spec, &["lr=0.08".into()]).unwrap();
        assert_eq!(spec.hyper_value(&chosen, "lr"), Some(Fixed(80_000)));
        assert_eq!(spec.hyper_value(&chosen, "momentum"), Some(Fixed(900_000)));
        for (bad, says) in [
            ("lr=0.5", "outside"),
            ("beta1=0.5", "declares no hyper-parameter"),
            ("lr", "NAME=VALUE"),
            ("lr=0.0000001", "six decimal places"),
        ] {
            let err = choose_hyper(&spec, &[bad.into()]).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn an_exact_task_fixes_the_thread_count() {
        let mut spec = TaskFile::parse(TASK).unwrap().spec;
        spec.verification.cpu_threads = 2;
        assert_eq!(threads(&spec, None).unwrap(), 2);
        assert!(threads(&spec, Some(3)).is_err());
        spec.verification.replay_tolerance = Fixed(100);
        spec.verification.optimizer_tolerance = Fixed(3000);
        assert_eq!(threads(&spec, Some(3)).unwrap(), 3);
        assert_eq!(threads(&spec, None).unwrap(), 1);
    }
}
