//! `pot-node train`, `verify` and `eval` from the command line, and their refusals.

use std::path::PathBuf;
use std::process::{Command, Output};

const TASK: &str = "model: mlp:32
dataset:
  locator: builtin:digits
  sha256: 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22
optimizer: {kind: sgd, lr: 0.05, momentum: 0.9}
batch_size: 32
steps: 200
checkpoint_interval: 20
seed: 11
";

/// A temporary directory with a task file, a data cache and a place for the run.
struct Workspace {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    task: PathBuf,
    run: PathBuf,
}

impl Workspace {
    fn new(task: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace {
            cache: dir.path().join("cache"),
            task: dir.path().join("task.yaml"),
            run: dir.path().join("run"),
            _dir: dir,
        };
        std::fs::write(&ws.task, task).unwrap();
        ws
    }

    /// `pot-node <command> --spec TASK <run flag> RUN <extra…>` with this workspace's cache.
    fn pot_node(&self, command: &str, extra: &[&str]) -> Output {
        let run_flag = if command == "train" { "--out" } else { "--run" };
        Command::new(env!("CARGO_BIN_EXE_pot-node"))
            .arg(command)
            .args(["--spec", self.task.to_str().unwrap()])
            .args([run_flag, self.run.to_str().unwrap()])
            .args(extra)
            .args(["--data-cache", self.cache.to_str().unwrap()])
            .output()
            .unwrap()
    }

    fn train(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--cpu-capability", "native"];
        args.extend_from_slice(extra);
        self.pot_node("train", &args)
    }

    fn verify(&self, segments: &str) -> Output {
        self.pot_node("verify", &["--segments", segments])
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn train_verify_eval_and_a_tampered_checkpoint() {
    let ws = Workspace::new(TASK);
    let out = ws.train(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("checkpoints:  11"), "{}", text(&out));
    // A second run into the same directory is refused rather than mixed in.
    let again = ws.train(&[]);
    assert!(!again.status.success() && text(&again).contains("already holds a run"));

    let ok = ws.verify("0,4,9");
    assert!(ok.status.success(), "{}", text(&ok));
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["segments"].as_array().unwrap().len(), 3);

    let eval = ws.pot_node("eval", &[]);
    assert!(
        eval.status.success() && text(&eval).contains("accuracy: 0.9"),
        "{}",
        text(&eval)
    );

    // A checkpoint file swapped for another (valid) one: the hash check catches it.
    let checkpoints = ws.run.join("checkpoints");
    std::fs::copy(
        checkpoints.join("000003.safetensors"),
        checkpoints.join("000004.safetensors"),
    )
    .unwrap();
    let bad = ws.verify("4");
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("is not the committed"),
        "{}",
        text(&bad)
    );
    let bad = ws.verify("10");
    assert!(
        text(&bad).contains("segment 10 does not exist"),
        "{}",
        text(&bad)
    );
}

#[test]
fn a_wrong_dataset_hash_trains_nothing() {
    let ws = Workspace::new(&TASK.replace("09f66e6d", "19f66e6d"));
    let out = ws.train(&[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the task says 19f66e6d"),
        "{}",
        text(&out)
    );
    assert!(
        !ws.run.exists(),
        "nothing may be written when the data does not match"
    );

    let ws = Workspace::new(&TASK.replace("steps: 200", "steps: 210"));
    let out = ws.train(&[]);
    assert!(
        text(&out).contains("checkpoint_interval must be positive and divide steps"),
        "{}",
        text(&out)
    );

    let ws = Workspace::new(&TASK.replace("model: mlp:32", "model: mlp:32\ncolour: blue"));
    let out = ws.train(&[]);
    assert!(
        text(&out).contains("unknown field `colour`"),
        "{}",
        text(&out)
    );
}

#[test]
fn verify_replays_with_the_runs_own_thread_count() {
    // Bit-identical replay needs the same libtorch thread count (a different count may sum in
    // another order); the manifest records it and verify uses it.
    let ws = Workspace::new(&TASK.replace("mlp:32", "mlp:256,128"));
    let out = ws.train(&["--threads", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.run.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["threads"], 2);
    let ok = ws.verify("1,8");
    assert!(ok.status.success(), "{}", text(&ok));
}
