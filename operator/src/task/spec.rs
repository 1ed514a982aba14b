//! A `TrainingTask` in the ledger's terms: the `TaskSpec` that goes on chain (through the
//! protocol's written form, `TaskDoc`, so the ledger's own checks and messages apply), the
//! eval set and the windows.

use pot_protocol::Fixed;
use pot_protocol::Hash;
use pot_protocol::TaskSpec;
use pot_protocol::task::{
    BlobRef, DataFormat, DatasetRef, HyperDoc, LossKind, MetricKind, OptimizerDoc, TaskDoc,
};

use crate::crd::task::{
    BuiltinModel, Dataset, HyperParameter, Loss, Metric, Model, OptimizerKind, OptimizerSpec,
    TaskDefinition, Windows,
};

/// The task as the chain stores it, or why it cannot be one (named by field).
pub fn task_spec(def: &TaskDefinition) -> Result<TaskSpec, String> {
    let v = &def.verification;
    let doc = TaskDoc {
        model: model(&def.model)?,
        dataset: dataset(&def.dataset).map_err(|e| format!("task.dataset: {e}"))?,
        optimizer: optimizer(&def.optimizer)?,
        loss: match def.loss {
            Loss::CrossEntropy => LossKind::CrossEntropy,
            Loss::Mse => LossKind::Mse,
        },
        batch_size: def.batch_size,
        steps: def.steps,
        checkpoint_interval: def.checkpoint_interval,
        seed: def.seed,
        holdout_per_mille: (def.holdout_fraction.clamp(0.0, 1.0) * 1000.0).round() as u32,
        metric: match def.metric {
            Metric::Accuracy => MetricKind::Accuracy,
            Metric::Loss => MetricKind::Loss,
        },
        replay_tolerance: decimal("task.verification.replayTolerance", v.replay_tolerance)?,
        optimizer_tolerance: v
            .optimizer_tolerance
            .map(|t| decimal("task.verification.optimizerTolerance", t))
            .transpose()?,
        top_q: v.top_q,
        samples: v.samples,
        cpu_threads: v.cpu_threads,
    };
    TaskSpec::try_from(doc).map_err(|e| format!("task: {e}"))
}

/// The ledger's windows.
pub fn windows(w: &Windows) -> pot_protocol::tx::Windows {
    pot_protocol::tx::Windows {
        commit: w.commit,
        reveal: w.reveal,
        eval_reveal: w.eval_reveal,
        report_commit: w.report_commit,
        report_reveal: w.report_reveal,
        challenge: w.challenge,
        challenge_reveal: w.challenge_reveal,
        vote: w.vote,
        vote_reveal: w.vote_reveal,
    }
}

/// A dataset (the training set or the eval set) in the ledger's terms.
pub fn dataset(d: &Dataset) -> Result<DatasetRef, String> {
    use crate::crd::task::DataFormat as Format;
    Ok(DatasetRef {
        locator: d.locator.clone(),
        sha256: hash(&d.sha256)?,
        format: match d.format {
            Format::Csv => DataFormat::Csv,
            Format::Safetensors => DataFormat::Safetensors,
            Format::Idx => DataFormat::Idx,
        },
        labels: d
            .labels
            .as_ref()
            .map(|b| {
                Ok::<_, String>(BlobRef {
                    locator: b.locator.clone(),
                    sha256: hash(&b.sha256)?,
                })
            })
            .transpose()?,
        feature_divisor: d.feature_divisor,
        image: d.image.map(|i| [i.channels, i.height, i.width]),
    })
}

/// The model descriptor the node understands. A TorchScript module from a ConfigMap is named
/// by its hash (`pot://`): the operator publishes its bytes.
fn model(m: &Model) -> Result<String, String> {
    match (&m.builtin, &m.torch_script) {
        (Some(BuiltinModel::Mlp), None) => {
            let hidden = m.hidden.as_deref().unwrap_or_default();
            if hidden.is_empty() {
                return Err("task.model: mlp needs its hidden layer widths".into());
            }
            let widths: Vec<String> = hidden.iter().map(u32::to_string).collect();
            Ok(format!("mlp:{}", widths.join(",")))
        }
        (Some(BuiltinModel::Logistic), None) => Ok("logistic".into()),
        (Some(BuiltinModel::Lenet5), None) => Ok("lenet5".into()),
        (Some(BuiltinModel::ResnetSmall), None) => Ok("resnet-small".into()),
        (None, Some(ts)) => {
            let sha = hash(&ts.sha256).map_err(|e| format!("task.model.torchScript: {e}"))?;
            let locator = match (&ts.url, &ts.config_map) {
                (Some(url), None) => url.clone(),
                (None, Some(_)) => format!("pot://{sha}"),
                _ => {
                    return Err(
                        "task.model.torchScript: give exactly one of configMap and url".into(),
                    );
                }
            };
            Ok(format!("torchscript:{locator}#{sha}"))
        }
        _ => Err("task.model: give exactly one of builtin and torchScript".into()),
    }
}

fn optimizer(o: &OptimizerSpec) -> Result<OptimizerDoc, String> {
    let h = |name: &str, p: &Option<HyperParameter>| {
        p.as_ref()
            .map(|p| hyper(&format!("task.optimizer.{name}"), p))
            .transpose()
    };
    Ok(match o.kind {
        OptimizerKind::Sgd => OptimizerDoc::Sgd {
            lr: hyper("task.optimizer.lr", &o.lr)?,
            momentum: h("momentum", &o.momentum)?,
            weight_decay: h("weightDecay", &o.weight_decay)?,
        },
        OptimizerKind::Adamw => OptimizerDoc::Adamw {
            lr: hyper("task.optimizer.lr", &o.lr)?,
            beta1: h("beta1", &o.beta1)?,
            beta2: h("beta2", &o.beta2)?,
            weight_decay: h("weightDecay", &o.weight_decay)?,
        },
    })
}

fn hyper(field: &str, p: &HyperParameter) -> Result<HyperDoc, String> {
    match (p.value, p.min, p.max, p.default) {
        (Some(v), None, None, None) => Ok(HyperDoc::Value(decimal(field, v)?)),
        (None, Some(min), Some(max), Some(default)) => Ok(HyperDoc::Range {
            min: decimal(&format!("{field}.min"), min)?,
            max: decimal(&format!("{field}.max"), max)?,
            default: decimal(&format!("{field}.default"), default)?,
        }),
        _ => Err(format!(
            "{field}: a hyper-parameter is either {{value: x}} or {{min: a, max: b, default: d}}"
        )),
    }
}

fn decimal(field: &str, x: f64) -> Result<Fixed, String> {
    Fixed::from_decimal(x).map_err(|e| format!("{field}: {e}"))
}

fn hash(s: &str) -> Result<Hash, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a SHA-256 (64 lower-case hex digits)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::task::TrainingTask;

    fn repo_file(path: &str) -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(path),
        )
        .unwrap()
    }

    /// The example TrainingTask asks the chain for exactly the task `pot-node task submit`
    /// sends for the node's own digits example: one task, two spellings.
    #[test]
    fn the_example_task_is_the_nodes_digits_task() {
        let tt: TrainingTask =
            serde_yaml::from_str(&repo_file("manifests/task-digits.yaml")).unwrap();
        // The node's task file: the task, plus what `task submit` adds (read apart, as
        // `pot-node` does).
        let mut file: serde_yaml::Mapping =
            serde_yaml::from_str(&repo_file("node-image/node/tasks/digits-mlp.yaml")).unwrap();
        let mut take = |k: &str| file.remove(k).unwrap();
        let bounty: u64 = serde_yaml::from_value(take("bounty")).unwrap();
        let eval_set: DatasetRef = serde_yaml::from_value(take("eval_set")).unwrap();
        let node_windows: pot_protocol::tx::Windows =
            serde_yaml::from_value(take("windows")).unwrap();
        let from_node: TaskSpec = serde_yaml::from_value(file.into()).unwrap();
        assert_eq!(task_spec(&tt.spec.task).unwrap(), from_node);
        assert_eq!(tt.spec.bounty, bounty);
        assert_eq!(dataset(&tt.spec.eval_set).unwrap(), eval_set);
        assert_eq!(windows(&tt.spec.windows), node_windows);
    }

    #[test]
    fn a_value_with_more_than_six_decimals_is_refused_by_name() {
        let p = HyperParameter {
            value: Some(0.1234567),
            min: None,
            max: None,
            default: None,
        };
        let err = hyper("task.optimizer.lr", &p).unwrap_err();
        assert!(err.starts_with("task.optimizer.lr: "), "{err}");
        assert!(err.contains("six decimal places"), "{err}");
    }

    #[test]
    fn torchscript_from_a_configmap_is_named_by_its_hash() {
        let m: Model = serde_json::from_value(serde_json::json!({
            "torchScript": {"configMap": {"name": "m", "key": "model.pt"},
                            "sha256": "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"}
        }))
        .unwrap();
        assert_eq!(
            model(&m).unwrap(),
            "torchscript:pot://09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22#09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
        );
    }
}
